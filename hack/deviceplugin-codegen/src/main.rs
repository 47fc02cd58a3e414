//! Compiles the device-plugin proto with protox and writes the tonic/prost code
//! that portgroupd includes. Run from anywhere; paths are relative to the repo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    match generate() {
        Ok((code, target)) => {
            let current = std::fs::read_to_string(&target).unwrap_or_default();
            if check {
                if current == code {
                    println!("{} is up to date", target.display());
                    return ExitCode::SUCCESS;
                }
                eprintln!(
                    "{} differs from what api.proto generates: rerun without --check",
                    target.display()
                );
                return ExitCode::FAILURE;
            }
            if let Err(e) = std::fs::write(&target, code) {
                eprintln!("writing {}: {e}", target.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", target.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn generate() -> Result<(String, PathBuf), Box<dyn std::error::Error>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("src/daemon/deviceplugin");
    let descriptors = protox::compile([dir.join("api.proto")], [&dir])?;
    let out = tempdir()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(descriptors)?;
    let file = out.join("v1beta1.rs");
    let generated = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        format!(
            "// @generated from api.proto by hack/deviceplugin-codegen; do not edit.\n{generated}"
        ),
    )?;
    // As `cargo fmt` leaves it, so that formatting the repo never shows as drift.
    let status = std::process::Command::new("rustfmt")
        .args(["--edition", "2021"])
        .arg(&file)
        .status()?;
    if !status.success() {
        return Err(format!("rustfmt {}: {status}", file.display()).into());
    }
    let code = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_dir_all(&out);
    Ok((code, dir.join("v1beta1.rs")))
}

fn tempdir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("deviceplugin-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
