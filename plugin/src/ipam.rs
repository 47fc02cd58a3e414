//! Delegation to an IPAM plugin found in CNI_PATH (spec section 4).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use portgroup::Error;
use portgroup_plugin::cni::netconf::is_bare_file_name;
use portgroup_plugin::cni::result::CniResult;
use serde_json::Value;

/// One call to the delegated plugin.
pub struct Call<'a> {
    pub command: &'static str,
    pub ipam: &'a Value,
    /// The whole network configuration, as the spec has delegated plugins receive it.
    pub config: &'a [u8],
    pub cni_path: &'a [PathBuf],
    /// CNI_CONTAINERID and CNI_IFNAME, when they differ from ours (GC of another attachment).
    pub attachment: Option<(&'a str, &'a str)>,
}

fn plugin_name(ipam: &Value) -> &str {
    ipam.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The plugin's binary: a regular file directly inside one of the CNI_PATH
/// directories, by a bare name. Anything else is never executed.
fn find_binary(name: &str, cni_path: &[PathBuf]) -> Result<PathBuf, String> {
    if !is_bare_file_name(name) {
        return Err(format!(
            "{name:?} is not a bare plugin name; nothing was executed"
        ));
    }
    cni_path
        .iter()
        .map(|dir| dir.join(name))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file()))
        .ok_or_else(|| {
            format!(
                "not found in CNI_PATH ({})",
                std::env::join_paths(cni_path)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        })
}

/// The config the delegated plugin reads, with `ipam` set to the section we chose:
/// DEL and GC release through the section recorded at ADD, whatever the config says now.
fn with_section(config: &[u8], ipam: &Value) -> Option<Vec<u8>> {
    let mut conf: Value = serde_json::from_slice(config).ok()?;
    if conf.get("ipam") == Some(ipam) {
        return None;
    }
    conf.as_object_mut()?.insert("ipam".into(), ipam.clone());
    serde_json::to_vec(&conf).ok()
}

impl Call<'_> {
    /// Runs the plugin. ADD, DEL and CHECK mean the same in 1.0.0 and 1.1.0 and their
    /// results have one format, while many IPAM plugins (Debian's among them) stop at
    /// 1.0.0; so a 1.1.0 config reaches them as 1.0.0. GC and STATUS exist only in 1.1.0.
    pub fn run(&self) -> Result<Option<CniResult>, Error> {
        let rewritten = with_section(self.config, self.ipam);
        let config = rewritten.as_deref().unwrap_or(self.config);
        if !matches!(self.command, "ADD" | "DEL" | "CHECK") {
            return self.run_with(config);
        }
        match downgraded(config) {
            Some(bytes) => self.run_with(&bytes),
            None => self.run_with(config),
        }
    }

    fn run_with(&self, config: &[u8]) -> Result<Option<CniResult>, Error> {
        let name = plugin_name(self.ipam);
        let fail = |why: String, code: Option<u32>| Error::Ipam {
            plugin: name.to_string(),
            why,
            code,
        };
        let binary = find_binary(name, self.cni_path).map_err(|why| fail(why, None))?;
        let mut command = Command::new(&binary);
        command
            .env("CNI_COMMAND", self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((id, ifname)) = self.attachment {
            command
                .env("CNI_CONTAINERID", id)
                .env("CNI_IFNAME", ifname)
                .env_remove("CNI_NETNS");
        }
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("starting {}: {e}", binary.display()), None))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(config)
                .map_err(|e| fail(format!("writing config: {e}"), None))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|e| fail(format!("waiting: {e}"), None))?;
        let stdout: Value = if output.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&output.stdout)
                .map_err(|e| fail(format!("unreadable output: {e}"), None))?
        };
        if !output.status.success() {
            let code = stdout.get("code").and_then(Value::as_u64).map(|c| c as u32);
            let msg = stdout
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("failed");
            let details = stdout.get("details").and_then(Value::as_str).unwrap_or("");
            let why = if details.is_empty() {
                format!("{} {msg}", self.command)
            } else {
                format!("{} {msg}: {details}", self.command)
            };
            return Err(fail(why, code));
        }
        if stdout.is_null() {
            return Ok(None);
        }
        CniResult::from_value(&stdout, "IPAM result").map(Some)
    }
}

/// The config rewritten from 1.1.0 to 1.0.0 (its prevResult too), or None to send as is.
fn downgraded(config: &[u8]) -> Option<Vec<u8>> {
    let mut conf: Value = serde_json::from_slice(config).ok()?;
    if conf.get("cniVersion")? != "1.1.0" {
        return None;
    }
    conf["cniVersion"] = "1.0.0".into();
    if let Some(prev) = conf.get_mut("prevResult").filter(|p| p.is_object()) {
        prev["cniVersion"] = "1.0.0".into();
    }
    serde_json::to_vec(&conf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_names_in_cni_path_are_found() {
        let dir = std::env::temp_dir().join(format!("pg-ipam-find-{}", std::process::id()));
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(dir.join("good"), b"").unwrap();
        std::fs::write(sub.join("inner"), b"").unwrap();
        let path = vec![dir.clone()];
        assert_eq!(find_binary("good", &path).unwrap(), dir.join("good"));
        for bad in [
            "/bin/sh",
            "../x",
            "x/y",
            ".",
            "..",
            "sub/inner",
            "",
            "a\nb",
            "a\0b",
            "sub",
        ] {
            assert!(find_binary(bad, &path).is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_chosen_section_is_what_the_plugin_reads() {
        let recorded = serde_json::json!({"type": "host-local", "subnet": "10.0.0.0/24"});
        let now = br#"{"cniVersion":"1.0.0","ipam":{"type":"static"}}"#;
        let sent: Value = serde_json::from_slice(&with_section(now, &recorded).unwrap()).unwrap();
        assert_eq!(sent["ipam"], recorded);
        let same = br#"{"cniVersion":"1.0.0","ipam":{"type":"host-local","subnet":"10.0.0.0/24"}}"#;
        assert!(with_section(same, &recorded).is_none(), "sent unchanged");
    }

    #[test]
    fn downgrade_only_1_1_0() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                r#"{"cniVersion":"1.1.0","prevResult":{"cniVersion":"1.1.0"}}"#,
                Some("1.0.0"),
            ),
            (r#"{"cniVersion":"1.0.0"}"#, None),
            (r#"{"cniVersion":"0.4.0"}"#, None),
            ("{", None),
        ];
        for (input, want) in cases {
            let got =
                downgraded(input.as_bytes()).map(|b| serde_json::from_slice::<Value>(&b).unwrap());
            assert_eq!(
                got.as_ref().map(|v| v["cniVersion"].as_str().unwrap()),
                *want,
                "{input}"
            );
            if let Some(v) = got.filter(|v| v.get("prevResult").is_some()) {
                assert_eq!(v["prevResult"]["cniVersion"], "1.0.0");
            }
        }
    }
}
