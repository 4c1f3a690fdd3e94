//! The decommission workflow: retire → revoke (+ CRL) → wipe → decommissioned.
//!
//! Every step of every device is one registry transaction that also writes the
//! step's row in `decommissions` and a `decommission.step` event, so a crash (or a
//! SIGKILL) between steps leaves each device exactly at a step boundary and a
//! re-run (or `--resume`) continues there; a step marked done never runs again.
//! Only the wipe over a link spans two transactions (the nonce is recorded before
//! it is sent); see `wipe.rs` for how an interrupted wipe is finished.
//!
//! A batch runs in two phases so that the CRL is signed once, not once per device:
//! steps 1-2 for every device, then one CRL over all revocations, then steps 3-4.
//! Revocations mark the CRL stale in their own transaction; a crash before the CRL
//! is issued is repaired by the next run, before any wipe. A device that fails
//! stops at that step (recorded as failed, resumable) and the others go on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::store::Reader;
use serde::Serialize;

use super::revoke::{revoke_in_tx, Revocation, RevocationResult};
use super::wipe::{self, WipeLink};
use super::{
    check_text, report, JobOptions, ManualWipe, Progress, Step, WipeContext, WipeLevel, WipeSpec,
};
use crate::app::lifecycle::transition;
use crate::app::retire::crl::{self, Publication};
use crate::error::{Error, Result};
use crate::model::Actor;
use crate::model::EventKind;
use crate::pki::crl::{CrlIssued, Reason};
use crate::pki::signer::CaSigner;
use crate::store::devices::{self, Device, DeviceStatus};
use crate::store::retire::{self as rr, StepRow, WipeRecord};
use crate::store::{now_rfc3339, Store, Tx};

/// Wipe and job options as given on the command line or in a CSV row; unset
/// fields fall back to the row's defaults, then to what an earlier run stored.
#[derive(Debug, Clone, Default)]
pub struct Given {
    pub reason: Option<Reason>,
    pub port: Option<String>,
    pub level: Option<WipeLevel>,
    pub technique: Option<String>,
    pub tool: Option<String>,
    pub tool_version: Option<String>,
    pub verified_by: Option<String>,
    pub verification: Option<String>,
    pub context: WipeContext,
}

fn or<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
    a.clone().or_else(|| b.clone())
}

impl Given {
    /// `self` with unset fields taken from `base`.
    pub fn over(&self, base: &Given) -> Given {
        Given {
            reason: self.reason.or(base.reason),
            port: or(&self.port, &base.port),
            level: self.level.or(base.level),
            technique: or(&self.technique, &base.technique),
            tool: or(&self.tool, &base.tool),
            tool_version: or(&self.tool_version, &base.tool_version),
            verified_by: or(&self.verified_by, &base.verified_by),
            verification: or(&self.verification, &base.verification),
            context: context_over(&self.context, &base.context),
        }
    }

    /// Checks the free-text fields.
    pub fn check(&self) -> Result<()> {
        for (what, v) in [
            ("--wipe-port", &self.port),
            ("--wipe-technique", &self.technique),
            ("--wipe-tool", &self.tool),
            ("--wipe-tool-version", &self.tool_version),
            ("--verified-by", &self.verified_by),
            ("--verification", &self.verification),
            ("--technician", &self.context.technician),
            ("--location", &self.context.location),
            ("--destination", &self.context.destination),
            ("--media-type", &self.context.media_type),
        ] {
            if let Some(v) = v {
                check_text(what, v)?;
            }
        }
        Ok(())
    }

    /// The wipe these options describe, if any.
    pub fn wipe(&self) -> Result<Option<WipeSpec>> {
        let manual_bits = self.tool.is_some()
            || self.verified_by.is_some()
            || self.verification.is_some()
            || self.technique.is_some()
            || self.tool_version.is_some();
        match (&self.port, self.level) {
            (Some(_), Some(_)) => Err(Error::input(
                "give either --wipe-port (attested wipe) or --wipe-method (manual record), not both",
            )),
            (Some(p), None) => Ok(Some(WipeSpec::Serial { port: p.clone() })),
            (None, Some(level)) => {
                let tool = self.tool.clone().ok_or_else(|| {
                    Error::input("a manual wipe record needs --wipe-tool TEXT (the tool and how it was used)")
                })?;
                let verified_by = self.verified_by.clone().ok_or_else(|| {
                    Error::input("a manual wipe record needs --verified-by NAME (who checked the result)")
                })?;
                Ok(Some(WipeSpec::Manual(ManualWipe {
                    level,
                    technique: self.technique.clone(),
                    tool,
                    tool_version: self.tool_version.clone(),
                    verified_by,
                    verification: self.verification.clone(),
                })))
            }
            (None, None) if manual_bits => Err(Error::input(
                "--wipe-tool/--verified-by/--verification describe a manual wipe: add --wipe-method clear|purge|destroy",
            )),
            (None, None) => Ok(None),
        }
    }
}

fn context_over(a: &WipeContext, b: &WipeContext) -> WipeContext {
    WipeContext {
        technician: or(&a.technician, &b.technician),
        location: or(&a.location, &b.location),
        destination: or(&a.destination, &b.destination),
        media_type: or(&a.media_type, &b.media_type),
    }
}

/// One device to decommission.
#[derive(Debug, Clone)]
pub struct Job {
    pub serial: String,
    pub given: Given,
    /// CSV file and line, for error messages.
    pub at: Option<(String, usize)>,
}

/// A job resolved against the registry.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub device: Device,
    pub options: JobOptions,
    pub done: HashSet<Step>,
    pub steps: Vec<StepRow>,
    /// Why this device cannot proceed at all (reported as failed, nothing done).
    pub blocked: Option<String>,
}

impl Prepared {
    pub fn complete(&self) -> bool {
        self.done.contains(&Step::Decommission)
    }
    fn needs(&self, s: Step) -> bool {
        !self.done.contains(&s)
    }
}

fn at_err(at: &Option<(String, usize)>, e: Error) -> Error {
    match at {
        Some((f, l)) => Error::input_at(f, *l, e.to_string()),
        None => e,
    }
}

/// The options an earlier run stored for this device (from its latest step).
fn stored_options(steps: &[StepRow]) -> Option<JobOptions> {
    steps
        .iter()
        .filter_map(|s| {
            let order = Step::ALL.iter().position(|st| st.as_str() == s.step)?;
            let o = serde_json::from_value::<JobOptions>(s.options.clone()?).ok()?;
            Some((order, o))
        })
        .max_by_key(|(order, _)| *order)
        .map(|(_, o)| o)
}

/// Resolves jobs: devices exist, no duplicates, every unfinished device has a wipe.
/// Any problem fails the whole command before anything is written.
pub fn prepare(conn: &Reader, jobs: &[Job]) -> Result<Vec<Prepared>> {
    let _snapshot = conn.read_snapshot()?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        job.given.check().map_err(|e| at_err(&job.at, e))?;
        let device = devices::require_device(conn, &job.serial).map_err(|e| at_err(&job.at, e))?;
        if !seen.insert(device.id) {
            return Err(at_err(
                &job.at,
                Error::input(format!("device '{}' is listed twice", device.serial)),
            ));
        }
        let steps = rr::steps_for_device(conn, device.id)?;
        let done: HashSet<Step> = steps
            .iter()
            .filter(|s| s.status == "done")
            .filter_map(|s| Step::ALL.into_iter().find(|st| st.as_str() == s.step))
            .collect();
        let stored = stored_options(&steps);
        let given_wipe = job.given.wipe().map_err(|e| at_err(&job.at, e))?;
        let options = JobOptions {
            reason: job
                .given
                .reason
                .or(stored.as_ref().map(|s| s.reason))
                .unwrap_or(Reason::CessationOfOperation),
            wipe: given_wipe.or_else(|| stored.as_ref().and_then(|s| s.wipe.clone())),
            context: context_over(
                &job.given.context,
                &stored.map(|s| s.context).unwrap_or_default(),
            ),
        };
        let mut blocked = None;
        if steps.is_empty() && device.status == DeviceStatus::Decommissioned {
            blocked = Some(format!(
                "device '{}' is decommissioned but has no decommission record; it cannot be retired again",
                device.serial
            ));
        } else if !done.contains(&Step::Decommission)
            && !done.contains(&Step::Wipe)
            && options.wipe.is_none()
        {
            return Err(at_err(
                &job.at,
                Error::input(format!(
                    "device '{}': no wipe given: use --wipe-port PATH, or --wipe-method clear|purge|destroy --wipe-tool TEXT --verified-by NAME",
                    device.serial
                )),
            ));
        }
        out.push(Prepared {
            device,
            options,
            done,
            steps,
            blocked,
        });
    }
    Ok(out)
}

/// What happened to one device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceResult {
    pub serial: String,
    pub result: DeviceOutcome,
    pub steps: Vec<StepOutcome>,
    pub revoked: Vec<Revocation>,
    pub wipe: Option<String>,
    pub failed_step: Option<Step>,
    pub error: Option<String>,
    pub reports: Vec<PathBuf>,
}

/// The result of a run (or, in a dry run, of the plan) for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DeviceOutcome {
    #[serde(rename = "decommissioned")]
    Decommissioned,
    #[serde(rename = "already decommissioned")]
    AlreadyDecommissioned,
    /// Stopped at a step; resumable.
    #[serde(rename = "failed")]
    Failed,
    /// Dry run: the steps would run.
    #[serde(rename = "planned")]
    Planned,
    /// Dry run: the device would fail (blocked, or a forbidden transition).
    #[serde(rename = "would fail")]
    WouldFail,
}

impl DeviceOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceOutcome::Decommissioned => "decommissioned",
            DeviceOutcome::AlreadyDecommissioned => "already decommissioned",
            DeviceOutcome::Failed => "failed",
            DeviceOutcome::Planned => "planned",
            DeviceOutcome::WouldFail => "would fail",
        }
    }
}

impl std::fmt::Display for DeviceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepOutcome {
    pub step: Step,
    pub status: StepStatus,
    pub detail: Option<String>,
}

/// Where one step of one device stands after a run (or in a dry run's plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StepStatus {
    /// Done by this run.
    #[serde(rename = "done")]
    Done,
    /// Done by an earlier run.
    #[serde(rename = "done before")]
    DoneBefore,
    #[serde(rename = "failed")]
    Failed,
    /// Not reached (an earlier step failed).
    #[serde(rename = "not run")]
    NotRun,
    /// Dry run: the step would run.
    #[serde(rename = "will run")]
    WillRun,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Done => "done",
            StepStatus::DoneBefore => "done before",
            StepStatus::Failed => "failed",
            StepStatus::NotRun => "not run",
            StepStatus::WillRun => "will run",
        }
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub devices: Vec<DeviceResult>,
    pub crl: Option<CrlIssued>,
    pub crl_error: Option<String>,
    pub decommissioned: usize,
    pub failed: usize,
}

impl Summary {
    pub fn any_failed(&self) -> bool {
        self.failed > 0 || self.crl_error.is_some()
    }
}

fn describe_wipe(w: &Option<WipeSpec>) -> String {
    match w {
        Some(WipeSpec::Serial { port }) => format!("attested wipe over serial port {port}"),
        Some(WipeSpec::Manual(m)) => format!(
            "manual record: {} with {}, verified by {}",
            m.level.as_str(),
            m.tool,
            m.verified_by
        ),
        None => "-".into(),
    }
}

/// The plan for each device; changes nothing.
pub fn plan(conn: &Reader, prepared: &[Prepared]) -> Result<Summary> {
    let mut devices_out = Vec::new();
    let mut failed = 0;
    for p in prepared {
        let mut steps = Vec::new();
        let mut result = if p.complete() {
            DeviceOutcome::AlreadyDecommissioned
        } else {
            DeviceOutcome::Planned
        };
        let mut error = p.blocked.clone();
        if error.is_none()
            && p.needs(Step::Retire)
            && !p.device.status.can_move_to(DeviceStatus::Retired)
            && p.device.status != DeviceStatus::Retired
        {
            error = Some(format!(
                "device '{}' is {}; it cannot move to retired",
                p.device.serial, p.device.status
            ));
        }
        if error.is_some() {
            result = DeviceOutcome::WouldFail;
            failed += 1;
        }
        let active = rr::active_certs(conn, p.device.id)?;
        for s in Step::ALL {
            let (status, detail) = if !p.needs(s) {
                (StepStatus::DoneBefore, None)
            } else {
                let d = match s {
                    Step::Retire => format!("{} -> retired", p.device.status),
                    Step::Revoke => format!(
                        "revoke {} active certificate(s){} with reason {}, then refresh the CRL",
                        active.len(),
                        if active.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " ({})",
                                active
                                    .iter()
                                    .map(|c| c.serial_hex.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        },
                        p.options.reason
                    ),
                    Step::Wipe => describe_wipe(&p.options.wipe),
                    Step::Decommission => "retired -> decommissioned".into(),
                };
                (StepStatus::WillRun, Some(d))
            };
            steps.push(StepOutcome {
                step: s,
                status,
                detail,
            });
        }
        devices_out.push(DeviceResult {
            serial: p.device.serial.clone(),
            result,
            steps,
            revoked: Vec::new(),
            wipe: None,
            failed_step: None,
            error,
            reports: Vec::new(),
        });
    }
    Ok(Summary {
        dry_run: true,
        devices: devices_out,
        crl: None,
        crl_error: None,
        decommissioned: 0,
        failed,
    })
}

/// Test hook: abort right after committing decommission step N (1-4), as a SIGKILL
/// would, so that the tests can check that every step boundary resumes.
pub const CRASH_ENV: &str = "CRADLE_TEST_CRASH_AFTER_STEP";

/// Which devices a decommission takes.
#[derive(Debug, Clone)]
pub enum Selection {
    Serials(Vec<String>),
    /// A batch CSV (`jobs_from_csv`).
    Csv(PathBuf),
    /// Every device with an unfinished decommission.
    Unfinished,
}

/// One `cradle decommission`: the devices, the options given, where things go.
#[derive(Debug, Clone)]
pub struct Request {
    pub selection: Selection,
    /// Options given for every device (a CSV row's cells override them). Its port,
    /// if any, is checked before anything changes.
    pub given: Given,
    /// Return the plan and change nothing.
    pub dry_run: bool,
    /// Write a certificate of sanitization per decommissioned device here.
    pub report_dir: Option<PathBuf>,
    /// Organisation named on the certificates of sanitization.
    pub org: String,
    pub crl: Publication,
}

/// Decommissions the selected devices: resolves them (any problem fails the
/// command before anything is written), returns the plan on a dry run, checks the
/// link (one device per port, the registered device answering) before changing
/// anything, unlocks the CA only if a CRL has to be signed, then runs the steps
/// (`Runner`) and writes the certificates of sanitization. `None`: the selection is
/// empty (nothing unfinished to resume).
///
/// `open_link` opens the wipe link for a port; `unlock` comes from the caller, which
/// knows where the passphrase comes from (its error type is the caller's, so that
/// its context reaches the user unchanged).
pub fn run<E: From<Error>>(
    reg: &mut Store,
    req: &Request,
    actor: &Actor,
    open_link: &mut LinkOpener<'_>,
    unlock: impl FnOnce(&Store) -> std::result::Result<CaSigner, E>,
    progress: &dyn Progress,
) -> std::result::Result<Option<Summary>, E> {
    let job = |serial: String| Job {
        serial,
        given: req.given.clone(),
        at: None,
    };
    let jobs: Vec<Job> = match &req.selection {
        Selection::Csv(f) => jobs_from_csv(f, &req.given)?,
        Selection::Serials(s) => s.iter().cloned().map(job).collect(),
        Selection::Unfinished => unfinished(reg.reader())?.into_iter().map(job).collect(),
    };
    if jobs.is_empty() {
        return Ok(None);
    }
    let prepared = prepare(reg.reader(), &jobs)?;
    if req.dry_run {
        return Ok(Some(plan(reg.reader(), &prepared)?));
    }
    if let Some(port) = &req.given.port {
        preflight(&prepared, port, open_link)?;
    }
    if let Some(d) = &req.report_dir {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let signer = if needs_ca(reg.reader(), &prepared)? {
        Some(unlock(reg)?)
    } else {
        None
    };
    // A test hook: debug builds only (what `cargo test` runs), never a release binary.
    let crash_after = if cfg!(debug_assertions) {
        std::env::var(CRASH_ENV)
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
    } else {
        None
    };
    let write = |conn: &Reader, dev: &Device| {
        let dir = req.report_dir.as_deref().unwrap_or(Path::new("."));
        report::write(conn, dev, dir, &req.org)
    };
    progress.start(prepared.len() as u64);
    let summary = Runner {
        reg,
        actor,
        signer: signer.as_ref(),
        crl: req.crl.clone(),
        crash_after,
        open_link,
        write_report: req.report_dir.as_ref().map(|_| &write as &ReportWriter),
        progress: &|n| progress.done(n),
    }
    .run(prepared)?;
    progress.finish();
    Ok(Some(summary))
}

/// Before anything changes: a serial wipe takes one device at a time, and the
/// device on `port` must be the registered one that is still to be wiped.
fn preflight(prepared: &[Prepared], port: &str, open_link: &mut LinkOpener<'_>) -> Result<()> {
    let serial_wipes = prepared
        .iter()
        .filter(|p| !p.complete() && matches!(p.options.wipe, Some(WipeSpec::Serial { .. })))
        .count();
    if serial_wipes > 1 {
        return Err(Error::input(
            "--wipe-port wipes one device at a time: give one SERIAL",
        ));
    }
    let mut link = open_link(port)?;
    if let Some(p) = prepared
        .iter()
        .find(|p| !p.complete() && !p.done.contains(&Step::Wipe) && p.blocked.is_none())
    {
        wipe::check_identity(&p.device, link.as_mut())?;
    }
    Ok(())
}

/// Opens a wipe link for a port.
pub type LinkOpener<'a> = dyn FnMut(&str) -> Result<Box<dyn WipeLink>> + 'a;

/// Writes certificates of sanitization for one device (called after step 4).
pub type ReportWriter<'a> = dyn Fn(&Reader, &Device) -> Result<Vec<PathBuf>> + 'a;

pub struct Runner<'a> {
    pub reg: &'a mut Store,
    pub actor: &'a Actor,
    /// Unlocked issuing CA, needed when something is revoked or the CRL is stale.
    pub signer: Option<&'a CaSigner>,
    pub crl: Publication,
    /// Test hook (`CRASH_ENV`): abort the process right after committing this step number.
    pub crash_after: Option<u8>,
    pub open_link: &'a mut LinkOpener<'a>,
    pub write_report: Option<&'a ReportWriter<'a>>,
    pub progress: &'a dyn Fn(u64),
}

/// Whether a CRL has to be signed for these jobs (revocations pending or stale).
pub fn needs_ca(conn: &Reader, prepared: &[Prepared]) -> Result<bool> {
    crl::signer_needed(
        conn,
        prepared
            .iter()
            .any(|p| p.blocked.is_none() && !p.complete() && p.needs(Step::Revoke)),
    )
}

struct Live {
    result: DeviceResult,
    failed: bool,
}

impl Runner<'_> {
    fn crash_hook(&self, step: Step) {
        if self.crash_after == Some(step.number()) {
            // Test hook (CRADLE_TEST_CRASH_AFTER_STEP): die like a SIGKILL would,
            // right after the step's transaction committed.
            std::process::abort();
        }
    }

    pub fn run(&mut self, prepared: Vec<Prepared>) -> Result<Summary> {
        let mut live: Vec<Live> = prepared
            .iter()
            .map(|p| Live {
                result: DeviceResult {
                    serial: p.device.serial.clone(),
                    // What the device ends as unless a step fails (`fail`).
                    result: if p.complete() {
                        DeviceOutcome::AlreadyDecommissioned
                    } else {
                        DeviceOutcome::Decommissioned
                    },
                    steps: Step::ALL
                        .iter()
                        .map(|s| StepOutcome {
                            step: *s,
                            status: if p.needs(*s) {
                                StepStatus::NotRun
                            } else {
                                StepStatus::DoneBefore
                            },
                            detail: None,
                        })
                        .collect(),
                    revoked: Vec::new(),
                    wipe: None,
                    failed_step: None,
                    error: None,
                    reports: Vec::new(),
                },
                failed: false,
            })
            .collect();
        let mut progress = 0u64;

        // Phase A: retire and revoke, device by device.
        for (p, l) in prepared.iter().zip(live.iter_mut()) {
            if let Some(b) = &p.blocked {
                self.fail(p, l, Step::Retire, &Error::conflict(b.clone()));
                continue;
            }
            if p.complete() {
                continue;
            }
            for step in [Step::Retire, Step::Revoke] {
                if !p.needs(step) {
                    continue;
                }
                match self.do_step(p, step, l) {
                    Ok(()) => {
                        l.result.steps[step as usize].status = StepStatus::Done;
                        self.crash_hook(step);
                    }
                    Err(e) => {
                        self.fail(p, l, step, &e);
                        break;
                    }
                }
            }
        }

        // One CRL for the whole batch, before any wipe.
        let mut crl_out = None;
        let mut crl_error = None;
        match crl::publish_if_stale(self.reg, self.signer, &self.crl, self.actor) {
            Ok(c) => crl_out = c,
            Err(e) => crl_error = Some(format!("{e}")),
        }

        // Phase B: wipe and mark decommissioned.
        for (p, l) in prepared.iter().zip(live.iter_mut()) {
            if l.failed || p.blocked.is_some() {
                progress += 1;
                (self.progress)(progress);
                continue;
            }
            if !p.complete() {
                if let Some(e) = &crl_error {
                    let err = Error::crypto(format!(
                        "the CRL could not be refreshed, so no wipe was started: {e}"
                    ));
                    self.fail(p, l, Step::Wipe, &err);
                    progress += 1;
                    (self.progress)(progress);
                    continue;
                }
                for step in [Step::Wipe, Step::Decommission] {
                    if !p.needs(step) {
                        continue;
                    }
                    match self.do_step(p, step, l) {
                        Ok(()) => {
                            l.result.steps[step as usize].status = StepStatus::Done;
                            self.crash_hook(step);
                        }
                        Err(e) => {
                            self.fail(p, l, step, &e);
                            break;
                        }
                    }
                }
            }
            if !l.failed {
                if let Some(w) = self.write_report {
                    let dev = devices::device_by_id(self.reg.reader(), p.device.id)?
                        .unwrap_or_else(|| p.device.clone());
                    match w(self.reg.reader(), &dev) {
                        Ok(files) => l.result.reports = files,
                        Err(e) => {
                            l.failed = true;
                            l.result.result = DeviceOutcome::Failed;
                            l.result.error = Some(format!("certificate of sanitization: {e}"));
                        }
                    }
                }
            }
            progress += 1;
            (self.progress)(progress);
        }

        let devices_out: Vec<DeviceResult> = live.into_iter().map(|l| l.result).collect();
        let failed = devices_out
            .iter()
            .filter(|d| d.result == DeviceOutcome::Failed)
            .count();
        let decommissioned = devices_out
            .iter()
            .filter(|d| d.result == DeviceOutcome::Decommissioned)
            .count();
        Ok(Summary {
            dry_run: false,
            devices: devices_out,
            crl: crl_out,
            crl_error,
            decommissioned,
            failed,
        })
    }

    fn fail(&mut self, p: &Prepared, l: &mut Live, step: Step, e: &Error) {
        l.failed = true;
        l.result.result = DeviceOutcome::Failed;
        l.result.failed_step = Some(step);
        l.result.error = Some(e.to_string());
        l.result.steps[step as usize].status = StepStatus::Failed;
        if p.blocked.is_some() {
            return;
        }
        let opts = serde_json::to_value(&p.options).unwrap_or_default();
        let now = now_rfc3339();
        // Best effort: the failure is reported either way; the record makes it visible
        // in the registry and `--resume` finds the device.
        if let Ok(tx) = self.reg.write() {
            if rr::fail_step(&tx, p.device.id, step.as_str(), &opts, &e.to_string(), &now).is_ok() {
                let _ = tx.commit();
            }
        }
    }

    fn do_step(&mut self, p: &Prepared, step: Step, l: &mut Live) -> Result<()> {
        let opts = serde_json::to_value(&p.options)
            .map_err(|e| Error::Internal(format!("decommission options as JSON: {e}")))?;
        if step == Step::Wipe {
            if let Some(WipeSpec::Serial { port }) = &p.options.wipe {
                let mut link = (self.open_link)(port)?;
                let dev = current_device(self.reg.reader(), p.device.id)?;
                let actor = self.actor;
                let rec = wipe::attested_wipe(
                    self.reg,
                    &dev,
                    link.as_mut(),
                    port,
                    &p.options.context,
                    &opts,
                    actor,
                    &|tx, w, now| {
                        if step_done(tx, dev.id, Step::Wipe)? {
                            return Err(Error::conflict("wipe step was completed by another run"));
                        }
                        // attested_wipe started the step (with these options) before
                        // sending the nonce; starting it again would count a second attempt.
                        rr::finish_step(tx, dev.id, Step::Wipe.as_str(), now)?;
                        step_event(tx, dev.id, Step::Wipe, actor, now, wipe_details(w))
                    },
                )?;
                l.result.wipe = Some(rec.kind);
                return Ok(());
            }
        }
        let now = now_rfc3339();
        let tx = self.reg.write()?;
        // Re-check inside the write lock: another station may have run this step.
        if step_done(&tx, p.device.id, step)? {
            return Ok(());
        }
        let dev = current_device(&tx, p.device.id)?;
        let details = match step {
            Step::Retire => {
                if dev.status == DeviceStatus::Decommissioned {
                    return Err(Error::conflict(format!(
                        "device '{}' is decommissioned; it cannot be retired",
                        dev.serial
                    )));
                }
                let moved = transition(
                    &tx,
                    &dev,
                    DeviceStatus::Retired,
                    self.actor,
                    None,
                    &now,
                    serde_json::json!({"by": "decommission"}),
                )?;
                serde_json::json!({"from": dev.status, "already_retired": !moved})
            }
            Step::Revoke => {
                let certs = rr::active_certs(&tx, dev.id)?;
                let revs = revoke_in_tx(
                    &tx,
                    &dev,
                    &certs,
                    p.options.reason,
                    self.actor,
                    &now,
                    &serde_json::json!({"by": "decommission"}),
                )?;
                if revs.iter().any(|r| r.result == RevocationResult::Revoked) {
                    rr::mark_crl_stale(&tx)?;
                }
                let serials: Vec<&str> = revs.iter().map(|r| r.cert_serial.as_str()).collect();
                let d = serde_json::json!({"reason": p.options.reason, "revoked": serials});
                l.result.revoked = revs;
                d
            }
            Step::Wipe => {
                let Some(WipeSpec::Manual(m)) = &p.options.wipe else {
                    return Err(Error::input(format!(
                        "device '{}': no wipe given",
                        dev.serial
                    )));
                };
                let rec = manual_record(&dev, m, &p.options.context, &now);
                let id = rr::insert_wipe(&tx, &rec)?;
                l.result.wipe = Some("manual".into());
                wipe_details(&WipeRecord { id, ..rec })
            }
            Step::Decommission => {
                if dev.status != DeviceStatus::Retired {
                    return Err(Error::conflict(format!(
                        "device '{}' is {} (changed since it was retired); it must be retired to be decommissioned",
                        dev.serial, dev.status
                    )));
                }
                transition(
                    &tx,
                    &dev,
                    DeviceStatus::Decommissioned,
                    self.actor,
                    None,
                    &now,
                    serde_json::json!({"by": "decommission"}),
                )?;
                serde_json::json!({})
            }
        };
        rr::start_step(&tx, dev.id, step.as_str(), &opts, &now)?;
        rr::finish_step(&tx, dev.id, step.as_str(), &now)?;
        step_event(&tx, dev.id, step, self.actor, &now, details)?;
        tx.commit()?;
        Ok(())
    }
}

fn step_done(conn: &Reader, device_id: i64, step: Step) -> Result<bool> {
    Ok(rr::step_row(conn, device_id, step.as_str())?.is_some_and(|r| r.status == "done"))
}

fn current_device(conn: &Reader, id: i64) -> Result<Device> {
    devices::device_by_id(conn, id)?
        .ok_or_else(|| Error::not_found(format!("device {id} vanished")))
}

fn wipe_details(w: &WipeRecord) -> serde_json::Value {
    serde_json::json!({
        "wipe_id": w.id,
        "kind": w.kind,
        "level": w.level,
        "nonce": w.nonce_hex,
        "attestation_verified": w.attestation_verified,
    })
}

fn step_event(
    tx: &Tx<'_>,
    device_id: i64,
    step: Step,
    actor: &Actor,
    now: &str,
    details: serde_json::Value,
) -> Result<()> {
    let mut d = serde_json::json!({"step": step, "number": step.number()});
    if let (Some(o), serde_json::Value::Object(e)) = (d.as_object_mut(), details) {
        o.extend(e);
    }
    tx.event(EventKind::DecommissionStep, Some(device_id), actor, d, now)?;
    Ok(())
}

fn manual_record(dev: &Device, m: &ManualWipe, ctx: &WipeContext, now: &str) -> WipeRecord {
    WipeRecord {
        id: 0,
        device_id: dev.id,
        kind: "manual".into(),
        level: m.level.as_str().into(),
        method: m
            .technique
            .clone()
            .unwrap_or_else(|| m.level.title().to_string()),
        media_type: ctx.media_type.clone(),
        tool: Some(m.tool.clone()),
        tool_version: m.tool_version.clone(),
        verification: m.verification.clone(),
        verified_by: Some(m.verified_by.clone()),
        technician: ctx.technician.clone(),
        location: ctx.location.clone().or_else(|| dev.location.clone()),
        destination: ctx.destination.clone(),
        nonce_hex: None,
        attestation: None,
        attestation_verified: None,
        recorded_at: now.to_string(),
    }
}

/// Devices with an unfinished decommission (for `--resume` without serials).
pub fn unfinished(conn: &Reader) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for id in rr::unfinished_jobs(conn)? {
        if let Some(d) = devices::device_by_id(conn, id)? {
            out.push(d.serial);
        }
    }
    Ok(out)
}

/// CSV columns a decommission batch accepts (besides `serial`).
pub const CSV_COLUMNS: &[&str] = &[
    "serial",
    "reason",
    "wipe_port",
    "wipe_method",
    "wipe_technique",
    "wipe_tool",
    "wipe_tool_version",
    "verified_by",
    "verification",
    "technician",
    "location",
    "destination",
    "media_type",
];

/// Reads a decommission batch: `serial` plus optional per-row wipe fields (which
/// override the command-line ones). Every row is checked; errors name FILE:LINE.
pub fn jobs_from_csv(path: &Path, defaults: &Given) -> Result<Vec<Job>> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(file);
    let headers = rdr
        .headers()
        .map_err(|e| Error::input_at(&name, 1, e.to_string()))?
        .clone();
    let mut cols: HashMap<&'static str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h
            .trim_start_matches('\u{feff}')
            .trim()
            .to_ascii_lowercase()
            .replace('-', "_");
        let Some(known) = CSV_COLUMNS.iter().find(|c| **c == h) else {
            return Err(Error::input_at(
                &name,
                1,
                format!("unknown column '{h}' (expected {})", CSV_COLUMNS.join(", ")),
            ));
        };
        if cols.insert(known, i).is_some() {
            return Err(Error::input_at(
                &name,
                1,
                format!("column '{h}' appears twice"),
            ));
        }
    }
    let serial_col = *cols
        .get("serial")
        .ok_or_else(|| Error::input_at(&name, 1, "no 'serial' column in the header"))?;
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            Error::input_at(&name, line, e.to_string())
        })?;
        let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
        let cell = |c: &str| -> Option<String> {
            cols.get(c)
                .and_then(|i| rec.get(*i))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let serial = rec.get(serial_col).unwrap_or("").trim().to_string();
        let err = |e: Error| Error::input_at(&name, line, e.to_string());
        crate::app::identity::check_serial(&serial).map_err(err)?;
        let row = Given {
            reason: cell("reason").map(|r| r.parse()).transpose().map_err(err)?,
            port: cell("wipe_port"),
            level: cell("wipe_method")
                .map(|r| r.parse())
                .transpose()
                .map_err(err)?,
            technique: cell("wipe_technique"),
            tool: cell("wipe_tool"),
            tool_version: cell("wipe_tool_version"),
            verified_by: cell("verified_by"),
            verification: cell("verification"),
            context: WipeContext {
                technician: cell("technician"),
                location: cell("location"),
                destination: cell("destination"),
                media_type: cell("media_type"),
            },
        };
        let given = row.over(defaults);
        given.check().map_err(err)?;
        given.wipe().map_err(err)?;
        out.push(Job {
            serial,
            given,
            at: Some((name.clone(), line)),
        });
    }
    if out.is_empty() {
        return Err(Error::input_at(&name, 1, "no rows after the header"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::retire::wipe::tests::{setup, SimDevice};
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Shares one simulated device between runs (it keeps its wiped state).
    struct Shared(Rc<RefCell<SimDevice>>);
    impl WipeLink for Shared {
        fn hardware_id(&mut self) -> Result<String> {
            self.0.borrow_mut().hardware_id()
        }
        fn wipe(&mut self, nonce: [u8; 32]) -> Result<crate::attestation::WipeAttestation> {
            self.0.borrow_mut().wipe(nonce)
        }
    }

    fn actor() -> Actor {
        Actor {
            operator: "op".into(),
            station: "st".into(),
        }
    }

    fn run_jobs(reg: &mut Store, jobs: &[Job], sim: &Rc<RefCell<SimDevice>>) -> Summary {
        let prepared = prepare(reg.reader(), jobs).unwrap();
        let a = actor();
        let mut open = |_: &str| -> Result<Box<dyn WipeLink>> { Ok(Box::new(Shared(sim.clone()))) };
        let mut r = Runner {
            reg,
            actor: &a,
            signer: None,
            crl: Publication {
                path: PathBuf::from("/nonexistent/crl.pem"),
                next_update_days: 7,
                ocsp_dir: None,
            },
            crash_after: None,
            open_link: &mut open,
            write_report: None,
            progress: &|_| {},
        };
        r.run(prepared).unwrap()
    }

    fn serial_job(serial: &str) -> Job {
        Job {
            serial: serial.into(),
            given: Given {
                port: Some("/dev/sim".into()),
                ..Default::default()
            },
            at: None,
        }
    }

    fn events(reg: &Store, kind: &str) -> i64 {
        reg.test_i64(&format!(
            "SELECT COUNT(*) FROM events WHERE kind = '{kind}'"
        ))
    }

    #[test]
    fn attested_decommission_survives_a_pulled_cable_and_completes_on_rerun() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        // The certificate is already revoked, so this run signs no CRL.
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let sim = Rc::new(RefCell::new(SimDevice::new("HW-1", &key)));
        sim.borrow_mut().drop_reply = true;
        let s = run_jobs(&mut reg, &[serial_job("D1")], &sim);
        assert_eq!(s.failed, 1);
        assert_eq!(s.devices[0].failed_step, Some(Step::Wipe));
        assert!(s.devices[0].error.as_deref().unwrap().contains("re-run"));
        let st = rr::step_row(reg.reader(), dev.id, "wipe").unwrap().unwrap();
        assert_eq!(st.status, "failed");
        // Re-run with no options: the stored ones (the port) are used.
        let s = run_jobs(
            &mut reg,
            &[Job {
                serial: "D1".into(),
                given: Given::default(),
                at: None,
            }],
            &sim,
        );
        assert_eq!(s.failed, 0, "{:?}", s.devices[0].error);
        assert_eq!(s.devices[0].result, DeviceOutcome::Decommissioned);
        assert_eq!(sim.borrow().wipes_done.get(), 1, "the device wiped once");
        assert_eq!(events(&reg, "decommission.step"), 4);
        assert_eq!(events(&reg, "device.state"), 2);
        let w = rr::latest_wipe(reg.reader(), dev.id).unwrap().unwrap();
        assert_eq!(
            (w.kind.as_str(), w.attestation_verified),
            ("attested", Some(true))
        );
        let cert = crate::app::retire::report::build(
            reg.reader(),
            &devices::device_by_id(reg.reader(), dev.id)
                .unwrap()
                .unwrap(),
            "ACME",
        )
        .unwrap();
        let att = cert.attestation.unwrap();
        assert!(att.verified_now && att.verified_when_recorded);
    }

    #[test]
    fn wrong_device_stops_that_device_and_a_manual_record_finishes_it() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        let dev = setup(&mut reg, "D1", "HW-1", &key);
        let sim = Rc::new(RefCell::new(SimDevice::new("HW-OTHER", &key)));
        let s = run_jobs(&mut reg, &[serial_job("D1")], &sim);
        assert_eq!(s.devices[0].failed_step, Some(Step::Wipe));
        assert!(s.devices[0]
            .error
            .as_deref()
            .unwrap()
            .contains("wrong device"));
        assert_eq!(sim.borrow().wipes_done.get(), 0);
        let manual = Job {
            serial: "D1".into(),
            given: Given {
                level: Some(WipeLevel::Destroy),
                tool: Some("shredder".into()),
                verified_by: Some("QA".into()),
                ..Default::default()
            },
            at: None,
        };
        let s = run_jobs(&mut reg, &[manual], &sim);
        assert_eq!(s.devices[0].result, DeviceOutcome::Decommissioned);
        assert_eq!(events(&reg, "decommission.step"), 4);
        let w = rr::latest_wipe(reg.reader(), dev.id).unwrap().unwrap();
        assert_eq!((w.kind.as_str(), w.level.as_str()), ("manual", "destroy"));
    }

    fn request(selection: Selection, port: Option<&str>) -> Request {
        Request {
            selection,
            given: Given {
                port: port.map(str::to_string),
                ..Default::default()
            },
            dry_run: false,
            report_dir: None,
            org: "ACME".into(),
            crl: Publication {
                path: PathBuf::from("/nonexistent/crl.pem"),
                next_update_days: 7,
                ocsp_dir: None,
            },
        }
    }

    fn no_unlock(_: &Store) -> Result<CaSigner> {
        panic!("the CA must not be unlocked")
    }

    #[test]
    fn the_workflow_checks_the_device_on_the_port_before_anything_changes() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        setup(&mut reg, "D1", "HW-1", &key);
        let events_before = reg.test_i64("SELECT COUNT(*) FROM events");
        let sim = Rc::new(RefCell::new(SimDevice::new("HW-OTHER", &key)));
        let mut open = |_: &str| -> Result<Box<dyn WipeLink>> { Ok(Box::new(Shared(sim.clone()))) };
        let err = run(
            &mut reg,
            &request(Selection::Serials(vec!["D1".into()]), Some("/dev/sim")),
            &actor(),
            &mut open,
            no_unlock,
            &super::super::NoProgress,
        )
        .unwrap_err();
        assert!(err.to_string().contains("wrong device"), "{err}");
        assert_eq!(sim.borrow().wipes_done.get(), 0);
        assert_eq!(reg.test_i64("SELECT COUNT(*) FROM events"), events_before);
        assert_eq!(reg.test_i64("SELECT COUNT(*) FROM decommissions"), 0);
    }

    #[test]
    fn the_workflow_plans_a_dry_run_and_finds_nothing_to_resume() {
        let mut reg = Store::in_memory().unwrap();
        let key = crate::pki::keys::generate().unwrap();
        setup(&mut reg, "D1", "HW-1", &key);
        let events_before = reg.test_i64("SELECT COUNT(*) FROM events");
        let mut open = |_: &str| -> Result<Box<dyn WipeLink>> { panic!("no link on a dry run") };
        let none = run(
            &mut reg,
            &request(Selection::Unfinished, None),
            &actor(),
            &mut open,
            no_unlock,
            &super::super::NoProgress,
        )
        .unwrap();
        assert!(none.is_none());
        let mut req = request(Selection::Serials(vec!["D1".into()]), Some("/dev/sim"));
        req.dry_run = true;
        let s = run(
            &mut reg,
            &req,
            &actor(),
            &mut open,
            no_unlock,
            &super::super::NoProgress,
        )
        .unwrap()
        .unwrap();
        assert!(s.dry_run);
        assert_eq!(s.devices[0].result, DeviceOutcome::Planned);
        assert!(s.devices[0]
            .steps
            .iter()
            .all(|st| st.status == StepStatus::WillRun));
        assert_eq!(reg.test_i64("SELECT COUNT(*) FROM events"), events_before);
    }

    #[test]
    fn outcomes_serialise_as_the_strings_scripts_read() {
        use crate::app::retire::revoke::RevocationResult;
        let json = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for (o, want) in [
            (DeviceOutcome::Decommissioned, "decommissioned"),
            (
                DeviceOutcome::AlreadyDecommissioned,
                "already decommissioned",
            ),
            (DeviceOutcome::Failed, "failed"),
            (DeviceOutcome::Planned, "planned"),
            (DeviceOutcome::WouldFail, "would fail"),
        ] {
            assert_eq!(
                (json(serde_json::to_value(o).unwrap()), o.as_str()),
                (want.into(), want)
            );
        }
        for (st, want) in [
            (StepStatus::Done, "done"),
            (StepStatus::DoneBefore, "done before"),
            (StepStatus::Failed, "failed"),
            (StepStatus::NotRun, "not run"),
            (StepStatus::WillRun, "will run"),
        ] {
            assert_eq!(
                (json(serde_json::to_value(st).unwrap()), st.as_str()),
                (want.into(), want)
            );
        }
        for (r, want) in [
            (RevocationResult::Revoked, "revoked"),
            (RevocationResult::AlreadyRevoked, "already revoked"),
        ] {
            assert_eq!(json(serde_json::to_value(r).unwrap()), want);
        }
    }
}
