//! Delegation to an IPAM plugin found in CNI_PATH (spec section 4).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use portgroup::Error;
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

impl Call<'_> {
    /// Runs the plugin. ADD, DEL and CHECK mean the same in 1.0.0 and 1.1.0 and their
    /// results have one format, while many IPAM plugins (Debian's among them) stop at
    /// 1.0.0; so a 1.1.0 config reaches them as 1.0.0. GC and STATUS exist only in 1.1.0.
    pub fn run(&self) -> Result<Option<CniResult>, Error> {
        if !matches!(self.command, "ADD" | "DEL" | "CHECK") {
            return self.run_with(self.config);
        }
        match downgraded(self.config) {
            Some(bytes) => self.run_with(&bytes),
            None => self.run_with(self.config),
        }
    }

    fn run_with(&self, config: &[u8]) -> Result<Option<CniResult>, Error> {
        let name = plugin_name(self.ipam);
        let fail = |why: String, code: Option<u32>| Error::Ipam {
            plugin: name.to_string(),
            why,
            code,
        };
        let binary = self
            .cni_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                fail(
                    format!(
                        "not found in CNI_PATH ({})",
                        std::env::join_paths(self.cni_path)
                            .map(|p| p.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    ),
                    None,
                )
            })?;
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
