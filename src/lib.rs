//! portgroup: vSphere-style port groups for KubeVirt. The library shared by the
//! CNI plugin (`portgroup`) and the node daemon (`portgroupd`).

pub mod attachment;
pub mod error;
pub mod mac;
pub mod naming;
pub mod netlink;
pub mod netns;
pub mod nodeconfig;
pub mod paths;
pub mod state;

pub use error::{Error, Result};
pub mod daemon;
pub mod portsec;
