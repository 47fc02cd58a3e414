//! Port security (issue 4): only the VM's MAC and IPs may leave its port.
//! Placeholder: the implementation lands with the port-security work.

use std::net::IpAddr;

use crate::error::Error;
use crate::mac::MacAddr;

/// What one VM port may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRules {
    /// The host-side veth: the bridge port frames from the VM enter by.
    pub host_veth: String,
    pub mac: MacAddr,
    /// Allowed source IPs; empty means any IP (but still only `mac`).
    pub ips: Vec<IpAddr>,
}

/// Installs (or replaces) the rules for one port. Cost must not grow with the number of ports.
pub fn install(_rules: &PortRules) -> Result<(), Error> {
    Ok(())
}

/// Removes every rule for one port; a port with no rules is fine.
pub fn remove(_host_veth: &str) -> Result<(), Error> {
    Ok(())
}

/// Verifies the rules for one port are in place, for CHECK.
pub fn verify(_rules: &PortRules) -> Result<(), Error> {
    Ok(())
}
