//! `cradle identity …`: issue, batch, sign-csr, show, verify.

use std::fs;
use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::common::{print_json, progress_bar, ts, Ctx, PassArgs};
use crate::app::identity::{self, BatchOutput, IssueContext};
use crate::error::Error;
use crate::pki::cert::{colon_hex, read_certs};
use crate::pki::profile::Profile;
use crate::store::{certs, devices, events};

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Generate a key on the host and issue a certificate for one device
    #[command(
        after_help = "Writes DIR/SERIAL.key (mode 0600) and DIR/SERIAL.pem (certificate + CA chain).\n\nExamples:\n  cradle identity issue ACME-000001 --out ./out\n  cradle identity issue ACME-000001 --profile aws-iot --out ./out"
    )]
    Issue {
        /// Device serial (created in the registry if new)
        serial: String,
        /// Certificate profile: a name in HOME/templates, a built-in name, or a .toml path
        #[arg(long)]
        profile: Option<String>,
        /// Directory for the key and certificate files
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Issue identities for many new devices, in parallel on all cores
    #[command(
        after_help = "Examples:\n  cradle identity batch --count 10000 --serial-pattern 'ACME-{seq:06}' --bundle batch.jsonl\n  cradle identity batch --from devices.csv --out ./keys --batch B-2026-11\n\nThe bundle is JSON Lines (mode 0600): a header line {cradle_bundle, profile, ca, chain_pem},\nthen one line per device {serial, fingerprint, cert_serial, key_pem, cert_pem}.\n\nA chunk (1024 devices) is recorded before its keys are written, so a killed batch leaves\nnothing outside the registry. Re-running the same command finishes it: devices recorded\nand delivered are skipped; devices recorded but not delivered (their keys died with the\nprocess) have their certificates revoked (superseded, CRL republished) and get new ones;\na torn bundle line is dropped. Outputs that are not the first run's are refused."
    )]
    Batch {
        /// Number of devices to create (with --serial-pattern)
        #[arg(long, requires = "serial_pattern", conflicts_with = "from")]
        count: Option<u64>,
        /// Serial pattern with a {seq} or {seq:06} placeholder
        #[arg(long, value_name = "PATTERN")]
        serial_pattern: Option<String>,
        /// First sequence number
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// CSV file with a 'serial' column
        #[arg(long, value_name = "FILE.csv")]
        from: Option<PathBuf>,
        /// Certificate profile
        #[arg(long)]
        profile: Option<String>,
        /// Directory for per-device SERIAL.key and SERIAL.pem files
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// One JSON Lines file with every key and certificate (mode 0600)
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// Batch label recorded on each new device
        #[arg(long = "batch", value_name = "LABEL")]
        batch_label: Option<String>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Issue a certificate for a key made on the device, from its CSR
    #[command(
        name = "sign-csr",
        after_help = "The CSR's signature and key type (P-256) are checked; its subject is ignored and\nthe certificate's subject comes from the profile and the registry.\n\nExample:\n  cradle identity sign-csr ACME-000001 --csr device.csr -o ACME-000001.pem"
    )]
    SignCsr {
        /// Device serial
        serial: String,
        /// The CSR (PEM or DER)
        #[arg(long, value_name = "FILE")]
        csr: PathBuf,
        /// Certificate profile
        #[arg(long)]
        profile: Option<String>,
        /// Write certificate + chain to FILE (default: stdout)
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Write a device's esp_secure_cert partition image (ESP32 TLV: cert, CA chain, key)
    #[command(
        name = "export-esp-secure-cert",
        after_help = "For lines that flash ESP32s with their own tools. The image holds the private key in\nplaintext (mode 0600), so it needs the key file `cradle identity issue` wrote: cradle keeps\nno device keys, and a device provisioned over its port cannot be exported. Flash it with\n`esptool write-flash 0xD000 FILE` (the partition's offset in your table).\n\nExample:\n  cradle identity issue ACME-000001 --out . && cradle identity export-esp-secure-cert ACME-000001 -o ACME-000001.esc.bin"
    )]
    ExportEspSecureCert {
        /// Device serial
        serial: String,
        /// The device's private key (PEM) [default: ./SERIAL.key]
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Partition size (the image's length), e.g. 0x2000
        #[arg(long, value_name = "SIZE", default_value = "0x2000")]
        partition_size: String,
        /// Where to write the image (a new file)
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Show a device's certificates
    Show {
        /// Device serial
        serial: String,
    },
    /// Verify a certificate: chain to our CA, validity, revocation (exit 1 if not valid)
    #[command(after_help = "Example:\n  cradle identity verify out/ACME-000001.pem --json")]
    Verify {
        /// Certificate file (PEM or DER); the first certificate is checked
        cert: PathBuf,
    },
    /// Hold a bundle or key directory against the registry; record what our CA signed
    /// but the registry lacks, so it can be revoked
    #[command(
        after_help = "Each certificate found is one of: recorded (the registry has it, for that serial),\nimported (signed by a CA of this registry but not recorded: added as 'unused' for its\nserial, device created if needed, event identity.reconciled; revoke it with `cradle\nrevoke SERIAL`), foreign (not signed by our CAs; left alone) or mismatch (recorded for\nanother serial). Exit 0; exit 1 when something was imported, foreign or mismatched.\n\nExamples:\n  cradle identity reconcile --bundle batch.jsonl --dry-run\n  cradle identity reconcile --dir ./keys --json"
    )]
    Reconcile {
        /// A bundle written by `identity batch --bundle`
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "dir",
            required_unless_present = "dir"
        )]
        bundle: Option<PathBuf>,
        /// A directory of SERIAL.pem files (`identity batch --out`, `identity issue --out`)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Report what would be recorded; write nothing
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(ctx: &Ctx, cmd: IdentityCommand) -> anyhow::Result<i32> {
    match cmd {
        IdentityCommand::Issue {
            serial,
            profile,
            out,
            pass,
        } => {
            let mut reg = ctx.registry()?;
            let config = ctx.config()?;
            let profile = load_profile(ctx, profile.as_deref(), &config.default_profile)?;
            fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            let signer = ctx.signer(&reg, &pass)?;
            let actor = ctx.actor(&config);
            let ictx = IssueContext {
                signer: &signer,
                profile: &profile,
                org: &config.org,
                actor: &actor,
            };
            let r = identity::issue_one(&mut reg, &ictx, &serial, &out)?;
            if ctx.json {
                print_json(&r)?;
            } else {
                println!(
                    "issued {} for {} (profile {})",
                    r.cert_serial, r.serial, r.profile
                );
                for f in &r.files {
                    println!("  {}", f.display());
                }
            }
            Ok(0)
        }
        IdentityCommand::Batch {
            count,
            serial_pattern,
            start,
            from,
            profile,
            out,
            bundle,
            batch_label,
            pass,
        } => {
            let serials = match (&from, &serial_pattern, count) {
                (Some(f), None, None) => identity::serials_from_csv(f)?,
                (None, Some(p), Some(n)) => identity::expand_pattern(p, start, n)?,
                (None, Some(_), None) => {
                    return Err(Error::input("--serial-pattern needs --count N").into())
                }
                _ => {
                    return Err(Error::input(
                        "give either --count N --serial-pattern PATTERN, or --from FILE.csv",
                    )
                    .into())
                }
            };
            let mut reg = ctx.registry()?;
            let config = ctx.config()?;
            let profile = load_profile(ctx, profile.as_deref(), &config.default_profile)?;
            let signer = ctx.signer(&reg, &pass)?;
            let actor = ctx.actor(&config);
            let ictx = IssueContext {
                signer: &signer,
                profile: &profile,
                org: &config.org,
                actor: &actor,
            };
            let pb = progress_bar(serials.len() as u64, "issuing");
            let summary = identity::batch(
                &mut reg,
                &ictx,
                &serials,
                &BatchOutput { dir: out, bundle },
                &crate::app::retire::crl::Publication::configured(&ctx.home, &config),
                batch_label.as_deref(),
                &|n| pb.set_position(n),
            )?;
            pb.finish_and_clear();
            if ctx.json {
                print_json(&summary)?;
            } else {
                if let Some(r) = &summary.resumed {
                    println!(
                        "resumed an interrupted batch: {} device(s) already delivered, skipped",
                        r.already_delivered
                    );
                    if !r.reissued.is_empty() {
                        println!(
                            "  {} recorded but never delivered (first {}): their certificates are revoked (superseded) and issued again",
                            r.reissued.len(),
                            r.reissued[0]
                        );
                    }
                }
                println!(
                    "issued {} identities ({} .. {}) with profile {} in {:.2}s ({:.0}/s)",
                    summary.issued,
                    summary.first.as_deref().unwrap_or("-"),
                    summary.last.as_deref().unwrap_or("-"),
                    summary.profile,
                    summary.seconds,
                    summary.per_second
                );
            }
            Ok(0)
        }
        IdentityCommand::SignCsr {
            serial,
            csr,
            profile,
            out,
            pass,
        } => {
            let csr_bytes = read_limited(&csr, 64 * 1024)?;
            let mut reg = ctx.registry()?;
            let config = ctx.config()?;
            let profile = load_profile(ctx, profile.as_deref(), &config.default_profile)?;
            // Check the CSR before asking for the passphrase.
            let der = crate::pki::csr::csr_der_from_bytes(&csr_bytes)?;
            crate::pki::csr::check_csr(&der).map_err(|e| {
                anyhow::Error::new(e).context(format!("rejected {}", csr.display()))
            })?;
            let signer = ctx.signer(&reg, &pass)?;
            let actor = ctx.actor(&config);
            let ictx = IssueContext {
                signer: &signer,
                profile: &profile,
                org: &config.org,
                actor: &actor,
            };
            let (r, pem) =
                identity::sign_csr(&mut reg, &ictx, &serial, &csr_bytes, out.as_deref())?;
            if ctx.json {
                print_json(&serde_json::json!({"identity": r, "certificate_pem": pem}))?;
            } else if out.is_none() {
                print!("{pem}");
            } else {
                println!("issued {} for {} from CSR", r.cert_serial, r.serial);
            }
            Ok(0)
        }
        IdentityCommand::ExportEspSecureCert {
            serial,
            key,
            partition_size,
            out,
        } => {
            let size = crate::pki::esp_secure_cert::parse_size(&partition_size)
                .filter(|s| *s >= 0x1000 && *s <= 0x10_0000 && s % 0x1000 == 0)
                .ok_or_else(|| {
                    Error::input(format!(
                        "--partition-size '{partition_size}': want a multiple of 4 KiB up to 1 MiB, e.g. 0x2000"
                    ))
                })?;
            let key = key.unwrap_or_else(|| PathBuf::from(format!("{serial}.key")));
            let reg = ctx.registry_read()?;
            let r = crate::app::esp32::export(
                reg.reader(),
                &ctx.home.ca_dir(),
                &serial,
                &key,
                size,
                &out,
            )?;
            if ctx.json {
                print_json(&r)?;
            } else {
                println!(
                    "wrote {} ({} bytes, {} used): esp_secure_cert of {} with certificate {}",
                    r.file, r.bytes, r.used, r.serial, r.cert_serial
                );
            }
            Ok(0)
        }
        IdentityCommand::Show { serial } => show(ctx, &serial),
        IdentityCommand::Reconcile {
            bundle,
            dir,
            dry_run,
        } => {
            use crate::app::reconcile::{reconcile, Source};
            let src = match (bundle, dir) {
                (Some(b), _) => Source::Bundle(b),
                (None, Some(d)) => Source::Dir(d),
                (None, None) => unreachable!("clap requires one"),
            };
            let mut reg = if dry_run {
                ctx.registry_read()?
            } else {
                ctx.registry()?
            };
            let config = ctx.config()?;
            let s = reconcile(&mut reg, &src, &ctx.actor(&config), dry_run)?;
            if ctx.json {
                print_json(&s)?;
            } else {
                for f in s.findings.iter().filter(|f| f.result != "recorded") {
                    println!(
                        "{:<12} {} {}  {}  ({})",
                        f.result, f.serial, f.cert_serial, f.detail, f.at
                    );
                }
                println!(
                    "{} certificate(s): {} recorded, {} {}, {} foreign, {} mismatched, {} unreadable",
                    s.entries,
                    s.recorded,
                    s.imported,
                    if dry_run { "would be imported" } else { "imported as unused" },
                    s.foreign,
                    s.mismatched,
                    s.unreadable
                );
                if s.imported > 0 && !dry_run {
                    println!(
                        "revoke the imported ones: cradle revoke SERIAL… (or --from a CSV of them)"
                    );
                }
            }
            Ok(i32::from(s.imported + s.foreign + s.mismatched > 0))
        }
        IdentityCommand::Verify { cert } => {
            let bytes = read_limited(&cert, 1024 * 1024)?;
            let der = read_certs(&bytes, &cert.display().to_string())?.remove(0);
            let reg = ctx.registry_read()?;
            let v = crate::app::identity::verify(
                &reg,
                &der,
                time::OffsetDateTime::now_utc().unix_timestamp(),
            )?;
            if ctx.json {
                print_json(&v)?;
            } else {
                println!(
                    "{}: {}",
                    cert.display(),
                    if v.ok { "OK" } else { "NOT VALID" }
                );
                println!("  subject  {}", v.subject);
                println!(
                    "  chain    {}",
                    if v.chain.is_empty() {
                        "-".into()
                    } else {
                        v.chain.join(" <- ")
                    }
                );
                println!("  valid    {} .. {}", ts(v.not_before), ts(v.not_after));
                if let Some(s) = &v.registry_status {
                    println!(
                        "  registry {s}{}",
                        v.device
                            .as_ref()
                            .map(|d| format!(" (device {d})"))
                            .unwrap_or_default()
                    );
                }
                for p in &v.problems {
                    println!("  problem  {p}");
                }
            }
            Ok(if v.ok { 0 } else { 1 })
        }
    }
}

fn load_profile(ctx: &Ctx, name: Option<&str>, default: &str) -> anyhow::Result<Profile> {
    Ok(Profile::load(
        name.unwrap_or(default),
        ctx.templates().as_deref(),
    )?)
}

/// Reads a file, refusing one larger than `max` bytes (hostile input).
pub fn read_limited(path: &PathBuf, max: u64) -> anyhow::Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > max {
        return Err(Error::input(format!(
            "{}: {} bytes is larger than the {max}-byte limit",
            path.display(),
            meta.len()
        ))
        .into());
    }
    Ok(fs::read(path).map_err(|e| Error::io(path, e))?)
}

#[derive(Serialize)]
struct CertView {
    cert_serial: String,
    fingerprint: String,
    subject: String,
    profile: String,
    key_source: String,
    status: String,
    not_before: String,
    not_after: String,
    revoked_at: Option<String>,
    revocation_reason: Option<String>,
    /// The device's attestation of the key (nRF91: the %KEYGEN COSE and device UUID).
    #[serde(skip_serializing_if = "Option::is_none")]
    device_attestation: Option<serde_json::Value>,
    /// A successor from `cradle renew`: the certificate it supersedes and its renewal's
    /// state (pending: not yet confirmed on the device).
    #[serde(skip_serializing_if = "Option::is_none")]
    supersedes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    renewal: Option<String>,
}

fn show(ctx: &Ctx, serial: &str) -> anyhow::Result<i32> {
    let reg = ctx.registry_read()?;
    let dev = devices::require_device(reg.reader(), serial)?;
    let renewed = crate::store::renewals::by_new_cert(reg.reader(), dev.id)?;
    let certs: Vec<CertView> = certs::certs_for_device(reg.reader(), dev.id)?
        .into_iter()
        .map(|c| CertView {
            supersedes: renewed.get(&c.id).map(|r| r.1.clone()),
            renewal: renewed.get(&c.id).map(|r| r.0.clone()),
            cert_serial: c.serial_hex,
            fingerprint: c.fingerprint,
            subject: c.subject,
            profile: c.profile,
            key_source: c.key_source,
            status: c.status.as_str().into(),
            not_before: ts(c.not_before),
            not_after: ts(c.not_after),
            revoked_at: c.revoked_at,
            revocation_reason: c.revocation_reason,
            device_attestation: c.device_attestation,
        })
        .collect();
    let n_events = events::events_for_device(reg.reader(), dev.id)?.len();
    if ctx.json {
        print_json(&serde_json::json!({
            "serial": dev.serial,
            "status": dev.status,
            "hardware_id": dev.hardware_id,
            "certificates": certs,
            "events": n_events,
        }))?;
    } else {
        println!("{}  {}", dev.serial, dev.status);
        if certs.is_empty() {
            println!("  no certificates");
        }
        for c in &certs {
            println!(
                "  {} {} [{}] {}",
                c.status, c.cert_serial, c.profile, c.subject
            );
            println!(
                "      valid {} .. {}  key from {}",
                c.not_before, c.not_after, c.key_source
            );
            println!("      sha256 {}", colon_hex(&c.fingerprint));
            if let (Some(old), Some(state)) = (&c.supersedes, &c.renewal) {
                println!("      supersedes {old} (renewal {state})");
            }
            if let Some(ev) = &c.device_attestation {
                println!("      {}", super::common::attestation_line(ev));
            }
        }
    }
    Ok(0)
}
