//! Inventory: CSV import and export on top of the registry, and single-device
//! lifecycle edits. See `cell` for the formula and blank-cell rules.

pub mod asset;
pub mod cell;
pub mod delimiter;
pub mod device;
pub mod export;
pub mod fields;
pub mod import;

pub use crate::store::inventory::{DeviceFilter, MatchKey};
pub use delimiter::Delimiter;
pub use export::{export, Format};
pub use import::{import, Blank, ImportOptions, ImportSummary, Mode, Observer, Rejection};
