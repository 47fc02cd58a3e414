//! Errors shared by the plugin and the daemon, each mapped to its CNI code.

use thiserror::Error;

/// CNI error codes (spec 1.1, section 5) and our own, from 100 up.
/// The README lists every one of them; keep the two in step.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// A netlink or system call failed unexpectedly.
    pub const SYSTEM: u32 = 100;
    /// The interface name asked for already exists in the pod's network namespace,
    /// or the host-side veth of this attachment already exists.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The bridge is missing or is not a bridge.
    pub const BRIDGE_UNUSABLE: u32 = 102;
    /// The delegated IPAM plugin failed or returned something unusable.
    pub const IPAM_FAILED: u32 = 103;
    /// Another MAC answered for one of the VM's IP addresses.
    pub const IP_CONFLICT: u32 = 104;
    /// The MAC is not reserved on a portgroup marked strict.
    pub const MAC_NOT_RESERVED: u32 = 105;
    /// Installing, checking or removing port-security rules failed.
    pub const PORT_SECURITY: u32 = 106;
    /// CHECK found the attachment differs from what ADD made.
    pub const CHECK_FAILED: u32 = 107;
    /// The pod's namespace may not attach to this portgroup (or use this reserved MAC).
    pub const NAMESPACE_NOT_ALLOWED: u32 = 108;
    /// The node config does not permit what the network config asks for: a bridge
    /// for `bridge:` mode, turning off port security or the probe where it is required.
    pub const NOT_PERMITTED: u32 = 109;
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("cniVersion {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
    IncompatibleVersion(String),
    #[error("command {command} needs cniVersion {needs} or later, the config says {given}")]
    CommandNeedsVersion {
        command: &'static str,
        needs: &'static str,
        given: String,
    },
    #[error("field {field} = {value} is not supported: {why}")]
    UnsupportedField {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{var} {why}")]
    InvalidEnv { var: &'static str, why: String },
    #[error("reading the network configuration from stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("decoding {what}: {why}")]
    Decode { what: &'static str, why: String },
    #[error("{field}: {why}")]
    InvalidConfig { field: String, why: String },
    #[error("{0}")]
    TryAgainLater(String),
    #[error("{0}")]
    NotAvailable(String),
    #[error("{context}: {source}")]
    System {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {why}")]
    Netlink { context: String, why: String },
    #[error("{0}")]
    InterfaceExists(String),
    #[error("{0}")]
    BridgeUnusable(String),
    #[error("IPAM plugin {plugin}: {why}")]
    Ipam {
        plugin: String,
        why: String,
        /// The code the IPAM plugin itself returned, passed on when it is a well-known one.
        code: Option<u32>,
    },
    #[error("{ip} is in use on {vlan} by {mac}; the source VM may still be running")]
    IpConflict {
        ip: std::net::IpAddr,
        vlan: String,
        mac: crate::mac::MacAddr,
    },
    #[error("MAC {mac} has no reservation on strict portgroup {portgroup}")]
    MacNotReserved {
        mac: crate::mac::MacAddr,
        portgroup: String,
    },
    #[error("{ip} is not reserved for MAC {mac} on strict portgroup {portgroup}; only the reservation's addresses may be used there")]
    IpNotReserved {
        ip: std::net::IpAddr,
        mac: crate::mac::MacAddr,
        portgroup: String,
    },
    #[error("{what}: namespace {namespace} may not attach to portgroup {portgroup} (allowed: {allowed})")]
    NamespaceNotAllowed {
        /// What was refused: the attachment, or the use of a reserved MAC.
        what: String,
        /// The pod's namespace as shown in messages ("(none sent)" when absent).
        namespace: String,
        portgroup: String,
        allowed: String,
    },
    #[error("{0}")]
    NotPermitted(String),
    #[error("port security: {0}")]
    PortSecurity(String),
    #[error("check failed: {0}")]
    CheckFailed(String),
}

impl Error {
    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            Error::IncompatibleVersion(_) | Error::CommandNeedsVersion { .. } => {
                INCOMPATIBLE_VERSION
            }
            Error::UnsupportedField { .. } => UNSUPPORTED_FIELD,
            Error::InvalidEnv { .. } => INVALID_ENV,
            Error::Stdin(_) => IO_FAILURE,
            Error::Decode { .. } => DECODE,
            Error::InvalidConfig { .. } => INVALID_CONFIG,
            Error::TryAgainLater(_) => TRY_AGAIN_LATER,
            Error::NotAvailable(_) => NOT_AVAILABLE,
            Error::System { .. } | Error::Netlink { .. } => SYSTEM,
            Error::InterfaceExists(_) => INTERFACE_EXISTS,
            Error::BridgeUnusable(_) => BRIDGE_UNUSABLE,
            Error::Ipam { code, .. } => match code {
                Some(c) if *c < 100 => *c,
                _ => IPAM_FAILED,
            },
            Error::IpConflict { .. } => IP_CONFLICT,
            Error::MacNotReserved { .. } | Error::IpNotReserved { .. } => MAC_NOT_RESERVED,
            Error::NamespaceNotAllowed { .. } => NAMESPACE_NOT_ALLOWED,
            Error::NotPermitted(_) => NOT_PERMITTED,
            Error::PortSecurity(_) => PORT_SECURITY,
            Error::CheckFailed(_) => CHECK_FAILED,
        }
    }

    /// The short `msg` of the CNI error object; `details` carries the full text.
    pub fn summary(&self) -> &'static str {
        match self.code() {
            code::INCOMPATIBLE_VERSION => "incompatible CNI version",
            code::UNSUPPORTED_FIELD => "unsupported field in network configuration",
            code::INVALID_ENV => "invalid environment variable",
            code::IO_FAILURE => "I/O failure",
            code::DECODE => "failed to decode content",
            code::INVALID_CONFIG => "invalid network configuration",
            code::TRY_AGAIN_LATER => "try again later",
            code::NOT_AVAILABLE => "plugin not available",
            code::INTERFACE_EXISTS => "interface already exists",
            code::BRIDGE_UNUSABLE => "bridge unusable",
            code::IPAM_FAILED => "IPAM failed",
            code::IP_CONFLICT => "IP address in use by another MAC",
            code::MAC_NOT_RESERVED => "not reserved on strict portgroup",
            code::NAMESPACE_NOT_ALLOWED => "namespace not allowed on portgroup",
            code::NOT_PERMITTED => "not permitted by the node config",
            code::PORT_SECURITY => "port security failed",
            code::CHECK_FAILED => "attachment check failed",
            _ => "system error",
        }
    }

    pub fn invalid_config(field: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            why: why.into(),
        }
    }

    pub fn env(var: &'static str, why: impl Into<String>) -> Self {
        Error::InvalidEnv {
            var,
            why: why.into(),
        }
    }

    pub fn system(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::System {
            context: context.into(),
            source,
        }
    }

    pub fn netlink(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Netlink {
            context: context.into(),
            why: err.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
