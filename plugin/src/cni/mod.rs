//! The CNI protocol: versions, the network configuration, results and errors.

pub mod netconf;
pub mod netconf_check;
pub mod result;
pub mod strict_json;

use serde_json::{json, Value};

use portgroup::error::Error;

/// The specification versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST_VERSION: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub fn parse(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "0.3.0" => CniVersion::V0_3_0,
            "0.3.1" => CniVersion::V0_3_1,
            "0.4.0" => CniVersion::V0_4_0,
            "1.0.0" => CniVersion::V1_0_0,
            "1.1.0" => CniVersion::V1_1_0,
            other => return Err(Error::IncompatibleVersion(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn result_has_ip_version(self) -> bool {
        self < CniVersion::V1_0_0
    }

    /// Fails unless this version knows `command` (CHECK since 0.4.0; GC and STATUS since 1.1.0).
    pub fn require(self, command: &'static str, needs: CniVersion) -> Result<(), Error> {
        if self < needs {
            return Err(Error::CommandNeedsVersion {
                command,
                needs: needs.as_str(),
                given: self.as_str().to_string(),
            });
        }
        Ok(())
    }
}

/// The error object of spec section 5, written on stdout.
pub fn error_json(cni_version: &str, err: &Error) -> Value {
    json!({
        "cniVersion": cni_version,
        "code": err.code(),
        "msg": err.summary(),
        "details": err.to_string(),
    })
}

pub fn version_json(cni_version: &str) -> Value {
    json!({ "cniVersion": cni_version, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use portgroup::error::code;

    #[test]
    fn versions() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v).unwrap().as_str(), *v);
        }
        for bad in ["0.2.0", "0.1.0", "1.2.0", "2.0.0", "", "1.0"] {
            assert_eq!(
                CniVersion::parse(bad).unwrap_err().code(),
                code::INCOMPATIBLE_VERSION
            );
        }
        assert!(CniVersion::V0_4_0.result_has_ip_version());
        assert!(!CniVersion::V1_0_0.result_has_ip_version());
        assert!(CniVersion::V0_3_1
            .require("CHECK", CniVersion::V0_4_0)
            .is_err());
        assert!(CniVersion::V1_1_0.require("GC", CniVersion::V1_1_0).is_ok());
    }

    #[test]
    fn error_object_shape() {
        let err = Error::invalid_config("mtu", "must be from 68 to 65535, got 10");
        let v = error_json("1.0.0", &err);
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["details"].as_str().unwrap().contains("mtu"));
        assert!(v["msg"].is_string());
    }
}
