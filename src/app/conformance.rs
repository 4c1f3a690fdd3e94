//! `cradle conformance`: a device checked against cradle-protocol(7). No registry, no CA,
//! no home: the device is the only thing it touches.

use crate::error::{Error, Result};
use crate::wire::conformance::{self, StartError};
pub use crate::wire::conformance::{Options, Verdict};

/// Runs every rule against the device at `o.port`; `report` sees each verdict first.
pub fn run(o: &Options, report: &mut dyn FnMut(&Verdict)) -> Result<Vec<Verdict>> {
    conformance::run(o, report).map_err(|e| match e {
        StartError::Wire(e) => e.into(),
        StartError::HoldsIdentity(m) => Error::conflict(m),
        StartError::NoDevice(m) => Error::Device(m),
    })
}
