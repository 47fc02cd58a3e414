//! One version everywhere: Cargo.toml's workspace version is the image tag the
//! manifests pull, the version label they carry, kustomize's newTag and the
//! Dockerfile's label. hack/image.sh reads Cargo.toml itself. Needs no root.

use std::path::Path;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE: &str = "ghcr.io/portgroup/portgroup";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value after `key:` on every line that has it (YAML, unquoted).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().trim_start_matches("- ").trim_start();
            rest.strip_prefix(key)?.strip_prefix(':').map(|v| {
                let v = v.trim();
                v.trim_matches('"')
            })
        })
        .collect()
}

#[test]
fn image_tag_cargo_version_and_manifests_agree() {
    let workspace = read("Cargo.toml");
    assert!(
        workspace.contains(&format!("version = \"{VERSION}\"")),
        "the workspace version is {VERSION}"
    );
    let want_image = format!("{IMAGE}:{VERSION}");

    let daemonset = read("manifests/daemonset.yaml");
    let images = values(&daemonset, "image");
    assert_eq!(images.len(), 2, "init container and portgroupd: {images:?}");
    for image in images {
        assert_eq!(image, want_image, "manifests/daemonset.yaml");
    }
    for label in values(&daemonset, "app.kubernetes.io/version") {
        assert_eq!(label, VERSION, "manifests/daemonset.yaml version label");
    }

    let kustomization = read("manifests/kustomization.yaml");
    assert_eq!(values(&kustomization, "name"), [IMAGE]);
    assert_eq!(values(&kustomization, "newTag"), [VERSION]);

    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.version=\"{VERSION}\"")),
        "Dockerfile version label"
    );
    assert!(
        dockerfile.contains(&format!("docker build -t {want_image} .")),
        "Dockerfile usage line"
    );

    let image_script = read("hack/image.sh");
    assert!(
        image_script.contains("ghcr.io/portgroup/portgroup:$version")
            && image_script.contains("[\"workspace\"][\"package\"][\"version\"]"),
        "hack/image.sh tags the image with Cargo.toml's workspace version"
    );
}

#[test]
fn every_manifest_image_is_the_one_image() {
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests"))
        .expect("manifests/")
    {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            for image in values(&text, "image") {
                if image.starts_with(IMAGE) {
                    assert_eq!(image, format!("{IMAGE}:{VERSION}"), "{}", path.display());
                }
            }
        }
    }
}
