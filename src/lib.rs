//! cradle: make, burn, track and retire IoT device identities.
//!
//! Layers: `cli` (clap, output, progress) → workflows (`identity`) → `pki`, `registry`.
//! The lower layers never print and know nothing of clap or indicatif.

pub mod app;
pub mod attestation;
pub mod cli;
pub mod device;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod home;
pub mod html;
pub mod model;
pub mod outfile;
pub mod passphrase;
pub mod pki;
pub mod signals;
pub mod sim;
pub mod store;
pub mod wire;

pub use error::{Error, Result};
