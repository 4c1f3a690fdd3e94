//! nRF91 AT-command provisioning flow.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use super::{PortResult, Progress, Run, Station};
use crate::error::{Error, Result};

pub(super) fn run(
    _st: &Station<'_>,
    _port: &Path,
    _progress: &dyn Progress,
    _res: &mut PortResult,
    _run: &mut Run,
    _skip: Option<&Mutex<HashSet<String>>>,
) -> Result<bool> {
    Err(Error::Device("nrf91 profile: in progress".into()))
}
