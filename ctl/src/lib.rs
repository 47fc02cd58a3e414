//! portgroupctl: plans a migration's network from a vSphere inventory.
//!
//! A pure core with thin edges:
//! - edges that read: [`xlsx`] and [`csvdir`] turn an RVTools export into
//!   [`sheet::Sheet`]s, [`rvtools`] turns sheets into the [`model::Inventory`],
//!   [`govc`] adds govc JSON;
//! - the core: [`plan::plan`] decides everything (portgroups, names,
//!   reservations, findings) from the inventory alone;
//! - [`render`] turns a plan into file contents (bytes, deterministic), and
//!   [`outdir`] is the only code that writes to disk, all or nothing.

pub mod csvdir;
pub mod error;
pub mod govc;
pub mod model;
pub mod names;
pub mod outdir;
pub mod plan;
pub mod render;
pub mod rvtools;
pub mod sheet;
pub mod values;
pub mod xlsx;

pub use error::InputError;
