//! Conflict probe (issue 4): RFC 5227 ARP probes and IPv6 DAD before ADD succeeds.
//! Placeholder: the implementation lands with the port-security work.

use std::net::IpAddr;
use std::time::Duration;

use crate::error::Error;
use crate::mac::MacAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Probes sent per address.
    pub count: u32,
    /// Gap between probes.
    pub interval: Duration,
    /// How long to keep listening after the last probe.
    pub wait: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            count: 2,
            interval: Duration::from_millis(50),
            wait: Duration::from_millis(150),
        }
    }
}

/// One answer heard for one probed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// Probes `ips` out of host interface `via` (the bridge, in the caller's namespace)
/// and returns every answer, including ones from `vm_mac` (the caller decides).
pub fn probe(
    _via: &str,
    _vm_mac: MacAddr,
    _ips: &[IpAddr],
    _config: &ProbeConfig,
) -> Result<Vec<ProbeAnswer>, Error> {
    Ok(Vec::new())
}
