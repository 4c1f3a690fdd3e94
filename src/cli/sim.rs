//! `cradle sim`: simulated devices on pseudo-terminals.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use clap::Args;

use super::common::Ctx;
use super::values::DeviceProfileArg;
use crate::sim::{self, Faults, SimConfig};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Make a symlink to each device: PATH for one device, PATH0..PATHn-1 for several
    #[arg(long, value_name = "PATH")]
    pub link: Option<PathBuf>,
    /// Number of devices
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub count: u16,
    /// Persistent state: a FILE for one device, a DIR (device-N.json) for several
    #[arg(long, value_name = "FILE|DIR")]
    pub state: Option<PathBuf>,
    /// Hardware id (several devices get ID-00, ID-01, …); default SIM-<random>. esp32:
    /// the factory MAC, e.g. 24:0a:c4:12:34:56 (several count its last byte up)
    #[arg(long, value_name = "ID")]
    pub hardware_id: Option<String>,
    /// Model the device reports
    #[arg(long, default_value = "sim-1")]
    pub model: String,
    /// Firmware version the device reports (cradle HELLO fw=, nrf91 AT+CGMR); default
    /// sim-<version> (nrf91: mfw_nrf9160_1.3.5). Overrides a --state file's: an update
    #[arg(long, value_name = "VERSION")]
    pub firmware: Option<String>,
    /// Simulated line rate: bytes are paced to it (8N1, 10 bits per byte)
    #[arg(long, default_value_t = 115_200, value_parser = clap::value_parser!(u32).range(50..=100_000_000))]
    pub baud: u32,
    /// Inject a fault (repeatable); see the list below
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,
    /// Protocol the devices speak
    #[arg(long, value_enum, default_value = "cradle")]
    pub profile: DeviceProfileArg,
    /// nrf91: write each modem's device UUID and identity public key to FILE (the
    /// format `cradle provision --nrf-identity-keys` reads) before the ports come up
    #[arg(long, value_name = "FILE")]
    pub identity_keys_out: Option<PathBuf>,
    /// Hold the host to the exact forms of cradle-protocol(7): refuse upper-case CRC
    /// digits, SEQ 0 or over 9 digits or with a leading zero, empty fields (bad-frame),
    /// and a request with more or fewer arguments than its verb takes (bad-argument)
    #[arg(long)]
    pub strict: bool,
    /// Requests each device says it can buffer (HELLO window=)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub window: u16,
}

pub fn run(ctx: &Ctx, a: SimArgs) -> anyhow::Result<i32> {
    let cfg = SimConfig {
        count: a.count as usize,
        link: a.link,
        state: a.state,
        hardware_id: a.hardware_id,
        model: a.model,
        firmware: a.firmware,
        baud: a.baud,
        faults: Faults::parse(&a.faults)?,
        profile: a.profile.into(),
        identity_keys_out: a.identity_keys_out,
        strict: a.strict,
        window: a.window as usize,
    };
    let stop = crate::signals::stop_flag();
    let (tx, rx) = mpsc::channel();
    let worker = {
        let cfg = cfg.clone();
        std::thread::spawn(move || sim::run(&cfg, stop, tx))
    };
    let mut out = std::io::stdout();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                // One line per device as soon as it is up; flushed for scripts reading a pipe.
                if ctx.json {
                    writeln!(out, "{}", serde_json::to_string(&r)?)?;
                } else {
                    writeln!(out, "{}", r.path.display())?;
                }
                out.flush()?;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let res = worker
        .join()
        .map_err(|_| anyhow::anyhow!("simulator thread panicked"))?;
    sim::remove_links(&cfg);
    res?;
    Ok(0)
}
