//! VERSION: the versions we speak, echoing the one asked about.

use portgroup_plugin::cni::{version_json, LATEST_VERSION};
use serde_json::Value;

pub fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    version_json(&asked)
}
