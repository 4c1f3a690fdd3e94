//! `cradle provision`: burn identities onto devices on one or many serial ports.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::common::{print_json, print_table, Ctx, PassArgs};
use super::values::{DeviceProfileArg, ModeArg};
use crate::app::station::{self, PortResult, Progress, Station};
use crate::error::{exit, Error};
use crate::pki::profile::Profile;

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Serial port (repeatable: several ports run in parallel)
    #[arg(long = "port", value_name = "PATH")]
    pub ports: Vec<PathBuf>,
    /// All ports matching GLOB (`*` and `?` in the last path component)
    #[arg(long = "ports", value_name = "GLOB")]
    pub ports_glob: Option<String>,
    /// csr: the device makes its key; inject: cradle makes it and writes it to the device
    #[arg(long, value_enum, default_value = "csr")]
    pub mode: ModeArg,
    /// Certificate profile (default: the config's default_profile)
    #[arg(long)]
    pub profile: Option<String>,
    /// Protocol the devices speak
    #[arg(long, value_enum, default_value = "cradle")]
    pub device_profile: DeviceProfileArg,
    /// Station mode: keep polling --ports GLOB and provision each device as it appears
    #[arg(long, requires = "ports_glob")]
    pub watch: bool,
    /// With --watch: exit after N devices passed
    #[arg(long, value_name = "N", requires = "watch")]
    pub limit: Option<usize>,
    /// Line rate of the ports
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Seconds a device may take to start answering a request (line time is added)
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// nrf91: modem identity public keys: a PEM bundle, each PUBLIC KEY block preceded
    /// by a line `Device-UUID: <uuid>`. A modem whose UUID is listed must sign its
    /// %KEYGEN reply with that key (attestation `verified`); others are `unverified`
    #[arg(long, value_name = "FILE")]
    pub nrf_identity_keys: Option<PathBuf>,
    /// esp32: flash offset of the esp_secure_cert partition (default 0xD000, 8 KiB)
    #[arg(long, value_name = "OFFSET", conflicts_with = "partition_table")]
    pub esp_partition_offset: Option<String>,
    /// esp32: an ESP-IDF partition table CSV; its esp_secure_cert row gives offset and size
    #[arg(long, value_name = "FILE")]
    pub partition_table: Option<PathBuf>,
    /// Config template (templates/config/NAME.toml|json, or a path): rendered per device
    /// and written into its config place after the identity, read back by SHA-256 and
    /// recorded (cradle and micropython profiles; see cradle-config(5))
    #[arg(long, value_name = "NAME")]
    pub config: Option<String>,
    #[command(flatten)]
    pub mp: MicropythonPathArgs,
    #[command(flatten)]
    pub pass: PassArgs,
}

/// Where a MicroPython board keeps its identity files (provision and decommission).
#[derive(Debug, Clone, Args)]
pub struct MicropythonPathArgs {
    /// micropython: the private key file on the board (PEM, PKCS#8; default
    /// /certs/device.key)
    #[arg(long, value_name = "PATH")]
    pub mp_key_path: Option<String>,
    /// micropython: the certificate file on the board (PEM; default /certs/device.crt)
    #[arg(long, value_name = "PATH")]
    pub mp_cert_path: Option<String>,
    /// micropython: the CA chain file on the board (PEM, issuing CA first; default
    /// /certs/chain.pem)
    #[arg(long, value_name = "PATH")]
    pub mp_chain_path: Option<String>,
}

impl MicropythonPathArgs {
    /// The checked paths; refused when given for another device profile.
    pub fn paths(
        &self,
        profile: DeviceProfileArg,
    ) -> Result<crate::device::micropython::Paths, Error> {
        use crate::device::micropython as mp;
        let given = [&self.mp_key_path, &self.mp_cert_path, &self.mp_chain_path];
        if profile != DeviceProfileArg::Micropython && given.iter().any(|g| g.is_some()) {
            return Err(Error::usage(
                "--mp-key-path, --mp-cert-path and --mp-chain-path apply to the micropython device profile only",
            ));
        }
        let pick = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_string());
        let p = mp::Paths {
            key: pick(&self.mp_key_path, mp::KEY_PATH),
            cert: pick(&self.mp_cert_path, mp::CERT_PATH),
            chain: pick(&self.mp_chain_path, mp::CHAIN_PATH),
        };
        p.check()?;
        Ok(p)
    }
}

/// One progress line per port on stderr (hidden when stderr is not a terminal).
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    /// Station mode: a FAILed device is retried when it is re-plugged.
    watch: bool,
    /// stderr is a terminal (bars drawn).
    live: bool,
}

impl Bars {
    fn new(watch: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let live = std::io::stderr().is_terminal();
        if !live {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        Bars {
            multi,
            bars: Mutex::new(HashMap::new()),
            watch,
            live,
        }
    }

    /// What a finished port's line says; in watch mode a FAIL says how to retry.
    fn verdict(&self, r: &PortResult) -> String {
        match &r.error {
            Some(e) if self.watch => format!("FAIL: {e} — unplug and re-plug the device to retry"),
            Some(e) => format!("FAIL: {e}"),
            None => r.result.as_str().to_string(),
        }
    }
}

impl Progress for Bars {
    fn update(&self, port: &str, step: &str, done: u64, total: u64) {
        let mut bars = self.bars.lock().expect("bars");
        let pb = bars.entry(port.to_string()).or_insert_with(|| {
            let pb = self.multi.add(ProgressBar::new(1));
            pb.set_style(
                ProgressStyle::with_template(
                    "{prefix:<24} [{bar:30}] {percent:>3}% {elapsed:>4} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            pb.set_prefix(port.to_string());
            pb
        });
        pb.set_length(total.max(1));
        pb.set_position(done.min(total.max(1)));
        pb.set_message(step.to_string());
    }
    fn finished(&self, r: &PortResult) {
        if let Some(pb) = self.bars.lock().expect("bars").get(&r.port) {
            pb.finish_with_message(self.verdict(r));
        }
        // A station's log (stderr not a terminal) gets each failure as it happens.
        if self.watch && !self.live && r.error.is_some() {
            eprintln!("cradle: {}: {}", r.port, self.verdict(r));
        }
    }
}

/// Prints each result as a JSON line as it finishes (watch mode with --json).
struct JsonLines<'a>(&'a Bars);
impl Progress for JsonLines<'_> {
    fn update(&self, port: &str, step: &str, done: u64, total: u64) {
        self.0.update(port, step, done, total)
    }
    fn finished(&self, r: &PortResult) {
        self.0.finished(r);
        if r.result != station::Outcome::Skip {
            if let Ok(s) = serde_json::to_string(r) {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{s}");
                let _ = out.flush();
            }
        }
    }
}

/// The esp_secure_cert partition from `--esp-partition-offset` / `--partition-table`;
/// also refuses what the ESP32 ROM cannot do (make keys).
fn esp_partition(a: &ProvisionArgs) -> anyhow::Result<Option<crate::device::esp32::Partition>> {
    use crate::device::esp32::Partition;
    use crate::pki::esp_secure_cert as esc;
    let esp = a.device_profile == DeviceProfileArg::Esp32;
    if !esp && (a.esp_partition_offset.is_some() || a.partition_table.is_some()) {
        return Err(Error::usage(
            "--esp-partition-offset and --partition-table apply to --device-profile esp32 only",
        )
        .into());
    }
    if esp && a.mode == ModeArg::Csr {
        return Err(Error::usage(
            "--device-profile esp32: the ESP32 ROM bootloader cannot make keys; give --mode inject (cradle makes the key, writes it into esp_secure_cert and forgets it)",
        )
        .into());
    }
    if let Some(o) = &a.esp_partition_offset {
        let offset = esc::parse_size(o)
            .filter(|v| v % crate::wire::esp_rom::SECTOR as u32 == 0 && *v < crate::device::esp32::FLASH_SIZE)
            .ok_or_else(|| {
                Error::input(format!(
                    "--esp-partition-offset '{o}': want a 4 KiB-aligned flash offset below 4 MiB, e.g. 0xD000"
                ))
            })?;
        return Ok(Some(Partition {
            offset,
            ..Partition::default()
        }));
    }
    if let Some(p) = &a.partition_table {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::input(format!("{}: cannot read: {e}", p.display())))?;
        let (offset, size) = esc::partition_from_csv(&text)
            .map_err(|e| Error::input(format!("{}: {e}", p.display())))?;
        if offset as u64 + size as u64 > crate::device::esp32::FLASH_SIZE as u64 {
            return Err(Error::input(format!(
                "{}: esp_secure_cert (0x{offset:x}, 0x{size:x} bytes) ends past the 4 MiB cradle assumes",
                p.display()
            ))
            .into());
        }
        return Ok(Some(Partition { offset, size }));
    }
    Ok(None)
}

pub fn run(ctx: &Ctx, a: ProvisionArgs) -> anyhow::Result<i32> {
    if a.ports.is_empty() && a.ports_glob.is_none() {
        return Err(Error::input("give at least one --port PATH or --ports GLOB").into());
    }
    if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
        return Err(Error::input("--timeout must be between 0 and 3600 seconds").into());
    }
    if a.device_profile == DeviceProfileArg::Micropython && a.mode == ModeArg::Csr {
        return Err(Error::usage(
            "--device-profile micropython needs --mode inject: a MicroPython board makes no key cradle can certify, so cradle makes it, writes it to the board and forgets it",
        )
        .into());
    }
    let micropython_paths = a.mp.paths(a.device_profile)?;
    let config_template = match &a.config {
        Some(name) => {
            crate::device::config_place(a.device_profile.into())
                .map_err(|why| Error::input(format!("--config: {why}")))?;
            Some(crate::app::config::ConfigTemplate::load(
                name,
                ctx.templates().as_deref(),
            )?)
        }
        None => None,
    };
    let reg = ctx.registry()?;
    let config = ctx.config()?;
    let profile = Profile::load(
        a.profile.as_deref().unwrap_or(&config.default_profile),
        ctx.templates().as_deref(),
    )?;
    let mut ports = a.ports.clone();
    if let (Some(g), false) = (&a.ports_glob, a.watch) {
        let found = station::glob(g);
        if found.is_empty() {
            return Err(Error::Device(format!("no port matches '{g}'")).into());
        }
        ports.extend(found);
    }
    ports.dedup();
    if !a.watch {
        for p in &ports {
            if !p.exists() {
                return Err(Error::Device(format!("{}: no such port", p.display())).into());
            }
        }
    }
    let id_keys = match &a.nrf_identity_keys {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::input(format!("{}: cannot read: {e}", p.display())))?;
            Some(
                crate::device::nrf91::IdentityKeys::parse(&text)
                    .map_err(|e| Error::input(format!("{}: {e}", p.display())))?,
            )
        }
    };
    let esp_partition = esp_partition(&a)?;
    let signer = ctx.signer(&reg, &a.pass)?;
    let actor = ctx.actor(&config);
    let st = Station {
        signer: &signer,
        profile: &profile,
        org: &config.org,
        actor: &actor,
        registry: reg.location(),
        mode: a.mode.into(),
        device_profile: a.device_profile.into(),
        baud: a.baud,
        timeout: Duration::from_secs_f64(a.timeout),
        nrf_identity_keys: id_keys.map(std::sync::Arc::new),
        esp_partition,
        micropython_paths,
        config: config_template.as_ref(),
    };
    drop(reg);
    let bars = Bars::new(a.watch);
    // Ctrl-C (or SIGTERM) sets the flag: each port finishes or abandons its step
    // cleanly, failures are recorded, and the table is printed (exit 130).
    let stop = crate::signals::stop_flag();
    let mut results = if a.watch {
        let pattern = a.ports_glob.clone().unwrap_or_default();
        if ctx.json {
            st.watch(&pattern, &JsonLines(&bars), stop, a.limit)
        } else {
            st.watch(&pattern, &bars, stop, a.limit)
        }
    } else {
        st.provision_all(&ports, &bars)
    };
    if a.watch {
        // Completion order is arbitrary; the table reads better by port.
        results.sort_by(|x, y| x.port.cmp(&y.port));
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    if ctx.json {
        if !a.watch {
            print_json(&results)?;
        }
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.port.clone(),
                    r.hardware_id.clone().unwrap_or_default(),
                    r.serial.clone().unwrap_or_default(),
                    r.result.as_str().to_string(),
                    r.cert_serial.clone().unwrap_or_default(),
                    match (&r.error, r.already_provisioned) {
                        (Some(e), _) => e.clone(),
                        (None, true) => "already provisioned".into(),
                        (None, false) => format!("{:.2}s, {} bytes", r.seconds, r.wire_bytes),
                    },
                ]
            })
            .collect();
        print_table(
            &[
                "PORT",
                "HARDWARE ID",
                "SERIAL",
                "RESULT",
                "CERT SERIAL",
                "DETAIL",
            ],
            &rows,
        )?;
    }
    for r in results.iter().filter(|r| !r.passed()) {
        eprintln!(
            "cradle: {}: FAIL: {}",
            r.port,
            r.error.as_deref().unwrap_or("unknown")
        );
    }
    Ok(if crate::signals::stopped() {
        eprintln!("cradle: interrupted: the table above is what was done; re-run to finish");
        exit::INTERRUPTED
    } else if failed > 0 {
        exit::FAILED
    } else {
        exit::OK
    })
}
