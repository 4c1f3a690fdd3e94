//! `cradle export aws-iot | azure-dps | nrf-cloud`: files a cloud registry ingests.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use super::common::{one_line, print_json, Ctx, PassArgs};
use crate::app::export::{self, aws_iot, azure_dps, nrf_cloud, Candidate, Cloud, Plan};
use crate::error::Error;
use crate::store::inventory::DeviceFilter;
use crate::store::{DeviceStatus, Store};

const COMMON_HELP: &str = "\
Pre-flight: every filtered device is checked before anything is written. A device that
cannot be handed over (no active certificate, a CN the cloud refuses, a subject field the
template needs...) is named on stderr with the reason; then nothing is written and the
exit code is 3, unless --skip-invalid leaves those devices out. Retired and decommissioned
devices, and revoked certificates, go into the cloud's status-update files instead.

-o DIR writes the files under their own names (DIR is created when given with a trailing
/); -o FILE names the one file, numbered FILE-001.EXT... when there are several of one kind.
Each file is written whole or not at all. The export is recorded as cloud.exported events
(one for the export with the SHA-256 of every file, one per device): see `cradle log
export` and `cradle device history`.

Exit codes: 0 written (or nothing matched), 2 usage, 3 devices failed the pre-flight or a
template is invalid (nothing written), 4 registry problem, 5 CA key problem, 8 cannot write.";

const AWS_HELP: &str = "\
Files (in DIR):
  provisioning-template.json  the bulk-registration template (--template, or cradle's:
                              thing = certificate CN, serial attribute, certificate PEM)
  bulk-registration.jsonl     one JSON object per line with the template's parameters
                              (aws iot start-thing-registration-task)
  certificates.jsonl          per device: serial, thingName, certificateId (SHA-256 of the
                              DER, hex, as AWS computes it), certificatePem, caCertificatePem
  status-updates.jsonl        {certificateId, newStatus}: REVOKED for revoked certificates,
                              INACTIVE for active ones of retired/decommissioned devices
                              (aws iot update-certificate --cli-input-json)
  ca.pem, ca-registration.json  the issuing CA and the register-ca-certificate input
                              (--registration-code adds verification.pem; --jitp adds
                              jitp-template.json and the registrationConfig)
Templates are checked: at most 10,240 characters; exactly one AWS::IoT::Certificate
resource naming exactly one of CertificateSigningRequest, CertificateId, CertificatePem
(not a CSR: cradle hands over certificates); every parameter without a default one cradle
fills: ThingName, SerialNumber, CertificatePem, CertificateId, CACertificatePem,
AWS::IoT::Certificate::*, or a device field (site, model...). With JITP every
AWS::IoT::Certificate::* parameter the template uses must be in each certificate subject.

Examples:
  cradle export aws-iot --batch B-2026-11 -o aws/
  cradle export aws-iot --since 2026-11-01 -o aws-delta/
  cradle export aws-iot -o aws/ --registration-code 8d2f...e1 --passphrase-file ca.pass
  cradle export aws-iot -o aws/ --jitp --jitp-role arn:aws:iam::123456789012:role/JITP";

const AZURE_HELP: &str = "\
Individual enrollments, X.509: registrationId = the certificate CN (at most 64 lower-case
a-z, 0-9, - . _ :), attestation.x509.clientCertificates.primary.certificate = the base64
of the certificate PEM, in bulk-operation bodies of at most 10 enrollments, one body per
line of enrollments.jsonl: {\"mode\": \"create\", \"enrollments\": [...]} (--update: mode
update), each line what one POST /enrollments call of the DPS service API takes.
Retired/decommissioned devices and devices whose certificates are all revoked come out as
provisioningStatus \"disabled\" enrollments in disabled.jsonl (mode update): DPS revokes
by disabling, not by CRL. --group ID writes enrollment-group.json instead, with the issuing
CA as signing certificate; the devices' CNs are still checked as registration IDs.

Examples:
  cradle export azure-dps --site berlin-1 -o dps/
  cradle export azure-dps --group acme-fleet -o dps/";

const NRF_HELP: &str = "\
onboard.csv as nRF Cloud's bulk onboarding takes it and Nordic's nrfcloud-utils writes it:
no header; deviceId, subType, tags (|), fwTypes (|, default APP|MODEM), the certificate
PEM in quotes; LF line ends; at most 1000 rows per file (onboard-001.csv... when more).
deviceId is the nRF91 modem's device UUID recorded with the certificate's attestation,
else nrf-<IMEI>. Retired and decommissioned devices are left out (remove them in nRF
Cloud). `cradle inventory export --format nrf-cloud` is the same export.

Examples:
  cradle export nrf-cloud --batch B-2026-11 -o onboard.csv
  cradle export nrf-cloud --tags 'berlin|pilot' --fw-types 'APP|MODEM|BOOT' -o nrf/";

/// The device filters of `inventory export`, plus `--since` for deltas.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only devices in this lifecycle state
    #[arg(long)]
    pub status: Option<String>,
    /// Only devices at this site
    #[arg(long)]
    pub site: Option<String>,
    /// Only devices of this batch
    #[arg(long)]
    pub batch: Option<String>,
    /// Only devices changed at or after T (the device, or a certificate issued or revoked): RFC 3339 or a date
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
}

impl FilterArgs {
    pub fn to_filter(&self) -> anyhow::Result<DeviceFilter> {
        Ok(DeviceFilter {
            status: self
                .status
                .as_deref()
                .map(str::parse::<DeviceStatus>)
                .transpose()?,
            site: self.site.clone(),
            batch: self.batch.clone(),
            since: self
                .since
                .as_deref()
                .map(super::log::parse_since)
                .transpose()?,
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Output directory (or file, see below)
    #[arg(short = 'o', long = "out", value_name = "FILE|DIR")]
    pub out: PathBuf,
    /// Leave out the devices the pre-flight refuses (they are still named) and export the rest
    #[arg(long)]
    pub skip_invalid: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// AWS IoT Core: bulk registration, certificate ids, CA registration, status updates
    #[command(name = "aws-iot", after_help = concat_help(AWS_HELP))]
    AwsIot {
        #[command(flatten)]
        common: CommonArgs,
        /// Your bulk provisioning template (JSON) instead of cradle's
        #[arg(long, value_name = "FILE")]
        template: Option<PathBuf>,
        /// IoT policy the default templates attach
        #[arg(long, value_name = "NAME")]
        policy: Option<String>,
        /// Add just-in-time provisioning: a JITP template in the CA registration
        #[arg(long, requires = "jitp_role")]
        jitp: bool,
        /// Your JITP template instead of cradle's (implies --jitp)
        #[arg(long, value_name = "FILE", requires = "jitp_role")]
        jitp_template: Option<PathBuf>,
        /// The IAM role AWS IoT assumes for JITP (registrationConfig.roleArn)
        #[arg(long, value_name = "ARN")]
        jitp_role: Option<String>,
        /// Issue verification.pem (CN = CODE, signed by the CA key) for registering the CA
        #[arg(long, value_name = "CODE")]
        registration_code: Option<String>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Azure IoT Hub DPS: individual enrollments in bulk batches of 10, or an enrollment group
    #[command(name = "azure-dps", after_help = concat_help(AZURE_HELP))]
    AzureDps {
        #[command(flatten)]
        common: CommonArgs,
        /// One enrollment group ID with the issuing CA as signing certificate
        #[arg(long, value_name = "ID")]
        group: Option<String>,
        /// Individual enrollments in mode update (create or replace) instead of create
        #[arg(long)]
        update: bool,
    },
    /// nRF Cloud: onboard.csv (at most 1000 devices per file)
    #[command(name = "nrf-cloud", after_help = concat_help(NRF_HELP))]
    NrfCloud {
        #[command(flatten)]
        common: CommonArgs,
        /// subType column (a custom device type)
        #[arg(long, value_name = "TYPE")]
        sub_type: Option<String>,
        /// Device tags, |-separated
        #[arg(long, value_name = "A|B")]
        tags: Option<String>,
        /// Firmware types for FOTA, |-separated (APP MODEM BOOT SOFTDEVICE BOOTLOADER)
        #[arg(long, value_name = "A|B", default_value = "APP|MODEM")]
        fw_types: String,
    },
}

fn concat_help(cloud: &'static str) -> String {
    format!("{cloud}\n\n{COMMON_HELP}")
}

fn read_template(path: &Path) -> anyhow::Result<String> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(b)
        .map_err(|_| Error::input(format!("{}: not UTF-8 text", path.display())).into())
}

pub fn run(ctx: &Ctx, cmd: ExportCommand) -> anyhow::Result<i32> {
    match cmd {
        ExportCommand::AwsIot {
            common,
            template,
            policy,
            jitp,
            jitp_template,
            jitp_role,
            registration_code,
            pass,
        } => {
            let t = match &template {
                Some(p) => {
                    aws_iot::Template::parse(&p.display().to_string(), &read_template(p)?, false)?
                }
                None => aws_iot::Template::parse(
                    "default template",
                    &aws_iot::default_template(policy.as_deref()),
                    false,
                )?,
            };
            let jitp = match (&jitp_template, jitp) {
                (Some(p), _) => Some(aws_iot::Template::parse(
                    &p.display().to_string(),
                    &read_template(p)?,
                    true,
                )?),
                (None, true) => Some(aws_iot::Template::parse(
                    "default JITP template",
                    &aws_iot::default_jitp_template(policy.as_deref()),
                    true,
                )?),
                (None, false) => None,
            }
            .map(|template| aws_iot::Jitp {
                template,
                role_arn: jitp_role.clone().unwrap_or_default(),
            });
            if let Some(code) = &registration_code {
                aws_iot::check_registration_code(code)?;
            }
            run_cloud(ctx, Cloud::AwsIot, &common, |reg, cands| {
                let ca = crate::app::ca::active_issuing(reg.reader())?;
                let verification_der = match &registration_code {
                    Some(code) => {
                        let signer = ctx.signer(reg, &pass)?;
                        Some(aws_iot::verification_cert(
                            &signer,
                            code,
                            time::OffsetDateTime::now_utc(),
                        )?)
                    }
                    None => None,
                };
                let opts = aws_iot::Options {
                    template: t,
                    jitp,
                    verification_der,
                };
                let pems = export::ca_pems(reg.reader())?;
                Ok(aws_iot::plan(cands, &opts, &pems, (ca.id, &ca.der))?)
            })
        }
        ExportCommand::AzureDps {
            common,
            group,
            update,
        } => run_cloud(ctx, Cloud::AzureDps, &common, |reg, cands| {
            let ca = crate::app::ca::active_issuing(reg.reader())?;
            let opts = azure_dps::Options { group, update };
            Ok(azure_dps::plan(cands, &opts, (ca.id, &ca.der))?)
        }),
        ExportCommand::NrfCloud {
            common,
            sub_type,
            tags,
            fw_types,
        } => {
            let opts =
                nrf_cloud::Options::new(sub_type.as_deref(), tags.as_deref(), Some(&fw_types))?;
            run_cloud(ctx, Cloud::NrfCloud, &common, |_, cands| {
                Ok(nrf_cloud::plan(cands, &opts))
            })
        }
    }
}

/// `inventory export --format nrf-cloud`: the nRF Cloud export with its defaults.
pub fn nrf_cloud_alias(ctx: &Ctx, filter: FilterArgs, out: Option<PathBuf>) -> anyhow::Result<i32> {
    let Some(out) = out else {
        return Err(Error::usage(
            "--format nrf-cloud writes onboard.csv files: give -o FILE or -o DIR",
        )
        .into());
    };
    let common = CommonArgs {
        filter,
        out,
        skip_invalid: false,
    };
    let opts = nrf_cloud::Options::default();
    run_cloud(ctx, Cloud::NrfCloud, &common, |_, cands| {
        Ok(nrf_cloud::plan(cands, &opts))
    })
}

fn run_cloud(
    ctx: &Ctx,
    cloud: Cloud,
    common: &CommonArgs,
    build: impl FnOnce(&Store, &[Candidate]) -> anyhow::Result<Plan>,
) -> anyhow::Result<i32> {
    let filter = common.filter.to_filter()?;
    let mut reg = ctx.registry()?;
    let actor = ctx.actor(&ctx.config()?);
    let cands = export::candidates(reg.reader(), &filter)?;
    if cands.is_empty() {
        if ctx.json {
            print_json(
                &serde_json::json!({"cloud": cloud, "written": false, "devices": 0, "files": []}),
            )?;
        } else {
            eprintln!("nothing to export: no device matches the filters");
        }
        return Ok(0);
    }
    let plan = build(&reg, &cands)?;
    let s = export::write_and_record(
        &mut reg,
        cloud,
        plan,
        &common.out,
        common.skip_invalid,
        &filter,
        &actor,
    )
    .with_context(|| format!("exporting to {}", cloud.as_str()))?;
    for p in &s.problems {
        eprintln!("{}: {}", one_line(&p.serial), one_line(&p.reason));
    }
    for p in &s.not_exported {
        eprintln!("note: {}: {}", one_line(&p.serial), one_line(&p.reason));
    }
    if ctx.json {
        print_json(&s)?;
    }
    if !s.written && !s.problems.is_empty() {
        return Err(Error::input(format!(
            "{} of {} devices cannot be handed over to {}; nothing written (fix them, or --skip-invalid to export the other {})",
            s.problems.len(),
            cands.len(),
            cloud.as_str(),
            cands.len() - s.problems.len()
        ))
        .into());
    }
    if !ctx.json {
        if s.files.is_empty() {
            eprintln!("nothing to export for {}", cloud.as_str());
        } else {
            println!(
                "exported {} devices to {} ({} withdrawn, {} skipped):",
                s.devices,
                cloud.as_str(),
                s.withdrawn,
                s.skipped
            );
            for f in &s.files {
                println!("  {}  ({} {}, sha256 {})", f.path, f.rows, f.kind, f.sha256);
            }
        }
    }
    Ok(0)
}
