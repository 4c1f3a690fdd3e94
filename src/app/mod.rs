//! Workflows: the only code that opens a write transaction. Each composes the store,
//! the PKI and the device links; the CLI parses, calls one workflow and prints.

pub mod audit;
pub mod batch_resume;
pub mod ca;
pub mod config;
pub mod conformance;
pub mod esp32;
pub mod export;
pub mod firmware;
pub mod home;
pub mod identity;
pub mod inventory;
pub mod label;
pub mod lifecycle;
pub mod maintenance;
pub mod ocsp;
pub mod reconcile;
pub mod renew;
pub mod retire;
pub mod station;
