//! The code only the `portgroup` CNI plugin uses: the CNI protocol (network
//! config, results, errors), the conflict probe, and the netlink requests made on
//! the pod's side. The node contract it shares with the daemon is the `portgroup`
//! library (`src/` at the top of the repository).

pub mod cni;
pub mod podlink;
pub mod probe;

// Every config example in the repository (README, DESIGN, schemas, manifests)
// through the one validator of its format.
#[cfg(test)]
mod config_examples;
