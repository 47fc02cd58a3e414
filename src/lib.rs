//! portgroup: vSphere-style port groups for KubeVirt. The node contract shared by
//! the CNI plugin (`portgroup`, in plugin/) and the node daemon (`portgroupd`), and,
//! behind the default `daemon` feature, the daemon itself (`daemon`).

pub mod attachment;
pub mod check;
pub mod error;
pub mod mac;
pub mod naming;
pub mod netlink;
pub mod netns;
pub mod nodeconfig;
pub mod paths;
pub mod state;
pub mod sweeper;

pub use error::{Error, Result};
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod portsec;
