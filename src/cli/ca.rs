//! `cradle ca …`: create, import, show and export the CA.

use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;

use super::common::{print_json, ts, Ctx, PassArgs};
use crate::error::Error;
use crate::model::EventKind;
use crate::outfile;
use crate::pki::ca::{self, CHAIN};
use crate::pki::cert::{colon_hex, info_of, to_pem};
use crate::pki::token::{self, Pkcs11Uri, TokenKey};
use crate::store::cas::{self, CaRole};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a P-256 root CA and an issuing CA signed by it
    #[command(
        long_about = "Create a P-256 root CA and an issuing CA signed by it.\n\nThe keys go into encrypted files under the home's ca/ directory, or with --hsm onto a PKCS#11 token: two key pairs labelled OBJECT-root and OBJECT-issuing are made on the token (P-256, CKA_TOKEN, CKA_SENSITIVE, never extractable) and the registry records their RFC 7512 URIs instead of key files. Every later signing command logs in to the token with its user PIN, read from --pin-file, else CRADLE_PKCS11_PIN, else a prompt on the terminal; never from the command line or the URI (pin-value and pin-source are refused).",
        after_help = "Examples:\n  cradle ca init --name \"ACME Devices\" --passphrase-file /run/secrets/ca-pass\n  CRADLE_CA_PASSPHRASE=… cradle ca init --name ACME\n  cradle ca init --name ACME --pin-file /run/secrets/hsm-pin \\\n    --hsm 'pkcs11:token=ca;object=acme?module-path=/usr/lib/softhsm/libsofthsm2.so'"
    )]
    Init {
        /// CA name, used in the subjects of both CA certificates
        #[arg(long)]
        name: String,
        /// Make the CA keys on this PKCS#11 token (pkcs11:token=LABEL;object=LABEL?module-path=MODULE; module-path may also be a path attribute)
        #[arg(long, value_name = "URI")]
        hsm: Option<String>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Import an existing CA certificate and key (PEM, or a key on a PKCS#11 token), plus its chain to the root
    #[command(
        after_help = "Examples:\n  cradle ca import --cert issuing.pem --key issuing.key --chain root.pem\n  cradle ca import --cert ca.pem --key ca-enc.key --key-passphrase-file old.pass\n  cradle ca import --cert ca.pem --chain root.pem --pin-file hsm.pin \\\n    --hsm 'pkcs11:token=ca;object=issuing?module-path=/usr/lib/softhsm/libsofthsm2.so'"
    )]
    Import {
        /// CA certificate (PEM or DER); more certificates in the file are taken as its chain
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The CA's private key (PEM: PKCS#8, encrypted PKCS#8 or SEC1)
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "hsm",
            conflicts_with = "hsm"
        )]
        key: Option<PathBuf>,
        /// Use this existing key on a PKCS#11 token (RFC 7512 URI with module-path); it must match --cert
        #[arg(long, value_name = "URI", conflicts_with = "key_passphrase_file")]
        hsm: Option<String>,
        /// Certificates from the CA up to the root (PEM)
        #[arg(long, value_name = "FILE")]
        chain: Option<PathBuf>,
        /// Passphrase of an encrypted --key (first line of FILE)
        #[arg(long, value_name = "FILE")]
        key_passphrase_file: Option<PathBuf>,
        /// Name to record for this CA (default: the certificate's CN)
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        pass: PassArgs,
    },
    /// Show the CA certificates: subject, validity, fingerprints
    Show,
    /// Issue the CRL of the issuing CA (next CRL number) and publish it to crl_path
    #[command(
        after_help = "Examples:\n  cradle ca crl --passphrase-file ca.pass\n  cradle ca crl --out crl.der --der\n  cradle ca crl --out - | openssl crl -noout -text"
    )]
    Crl(super::crl::CrlArgs),
    /// Pre-sign an OCSP response for every certificate of the issuing CA (RFC 5019)
    #[command(
        after_help = "Writes DIR/<serial hex>.der (one DER OCSPResponse per certificate: good or revoked\nwith reason and time; the serial in lower-case hex, as `identity show` prints it) and\nDIR/index.json (issuer, hashes, times, counts). Each response is valid until the next\nCRL update. With ocsp_dir set in config.toml, every CRL issue (so every revocation)\nre-signs, with the issuing CA, the responses of certificates issued or revoked since;\nrun this command on the CRL's schedule to renew the whole set.\nServe the set with `cradle ocsp serve --from DIR`, or from any web server.\n\nExamples:\n  cradle ca ocsp --out /srv/ocsp --passphrase-file ca.pass\n  cradle ca ocsp --delegate     # into ocsp_dir, signed by the OCSP signing certificate\n  openssl ocsp -respin /srv/ocsp/<serial>.der -issuer issuing.pem -CAfile root.pem -resp_text"
    )]
    Ocsp(super::ocsp::PresignArgs),
    /// Issue a delegated OCSP signing certificate (id-kp-OCSPSigning, ocsp-nocheck)
    #[command(
        after_help = "Issued by the issuing CA for a new P-256 key, valid --days (default 30); the key is\nencrypted with the CA passphrase beside the CA keys (ca/ocsp-signer.key, the certificate\nin ca/ocsp-signer.pem). A new one replaces the old; responses signed by the old one stay\nvalid until their nextUpdate. Use it with `ca ocsp --delegate` and `ocsp serve --delegate`.\n\nExamples:\n  cradle ca ocsp-signer --passphrase-file ca.pass\n  cradle ca ocsp-signer --days 7"
    )]
    OcspSigner(super::ocsp::SignerArgs),
    /// Write CA certificates as PEM for relying parties and verifiers
    #[command(
        after_help = "Examples:\n  cradle ca export --chain -o chain.pem\n  cradle ca export --root > root.pem"
    )]
    Export {
        /// Only the root CA certificate
        #[arg(long, group = "which")]
        root: bool,
        /// Only the issuing CA certificate
        #[arg(long, group = "which")]
        issuing: bool,
        /// Issuing CA followed by the rest of the chain up to the root (default)
        #[arg(long, group = "which")]
        chain: bool,
        /// Write to FILE instead of stdout
        #[arg(short, long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

pub fn run(ctx: &Ctx, cmd: CaCommand) -> anyhow::Result<i32> {
    match cmd {
        CaCommand::Init { name, hsm, pass } => init(ctx, &name, hsm.as_deref(), &pass),
        CaCommand::Import {
            cert,
            key,
            hsm,
            chain,
            key_passphrase_file,
            name,
            pass,
        } => import(
            ctx,
            &cert,
            match (&key, &hsm) {
                (_, Some(uri)) => KeySource::Token(uri),
                (Some(k), None) => KeySource::File(k),
                (None, None) => unreachable!("clap requires --key or --hsm"),
            },
            chain.as_ref(),
            key_passphrase_file.as_ref(),
            name,
            &pass,
        ),
        CaCommand::Show => show(ctx),
        CaCommand::Crl(a) => super::crl::run(ctx, a),
        CaCommand::Ocsp(a) => super::ocsp::presign(ctx, a),
        CaCommand::OcspSigner(a) => super::ocsp::issue_signer(ctx, a),
        CaCommand::Export {
            root,
            issuing,
            chain: _,
            out,
        } => export(ctx, root, issuing, out),
    }
}

fn init(ctx: &Ctx, name: &str, hsm: Option<&str>, pass: &PassArgs) -> anyhow::Result<i32> {
    let mut reg = ctx.registry()?;
    crate::app::ca::refuse_existing(&reg)?;
    if name.trim().is_empty() || name.len() > 64 {
        return Err(Error::input("--name must be 1-64 characters").into());
    }
    let config = ctx.config()?;
    let templates = ctx.templates();
    let Some(uri) = hsm else {
        let p = crate::passphrase::obtain(pass.passphrase_file.as_deref(), true)?;
        let material = ca::generate(name, &config.org, templates.as_deref(), p.as_bytes())?;
        return finish_install(ctx, &mut reg, name, &material, EventKind::CaCreated);
    };
    let uri = Pkcs11Uri::parse(uri)?;
    let pin = crate::passphrase::obtain_pin(pass.pin_file.as_deref())?;
    let (root, issuing) = token::create_ca_keys(&uri, &pin)
        .context("cannot create the CA keys on the PKCS#11 token")?;
    let done = ca::generate_on_token(name, &config.org, templates.as_deref(), &root, &issuing)
        .map_err(anyhow::Error::from)
        .and_then(|m| finish_install(ctx, &mut reg, name, &m, EventKind::CaCreated));
    if done.is_err() {
        // Keys no registry row points at would only confuse the next `ca init`.
        let _ = root.destroy();
        let _ = issuing.destroy();
    }
    done
}

/// Where `ca import` finds the CA's private key.
enum KeySource<'a> {
    File(&'a PathBuf),
    Token(&'a str),
}

fn import(
    ctx: &Ctx,
    cert: &PathBuf,
    key: KeySource<'_>,
    chain: Option<&PathBuf>,
    key_pass_file: Option<&PathBuf>,
    name: Option<String>,
    pass: &PassArgs,
) -> anyhow::Result<i32> {
    let mut reg = ctx.registry()?;
    crate::app::ca::refuse_existing(&reg)?;
    let cert_bytes = fs::read(cert).map_err(|e| Error::io(cert, e))?;
    let chain_bytes = match chain {
        Some(c) => Some(fs::read(c).map_err(|e| Error::io(c, e))?),
        None => None,
    };
    let material = match key {
        KeySource::File(key) => {
            let key_text =
                zeroize::Zeroizing::new(fs::read_to_string(key).map_err(|e| Error::io(key, e))?);
            let key_pass = match key_pass_file {
                Some(f) => Some(crate::passphrase::obtain(Some(f), false)?),
                None => None,
            };
            let p = crate::passphrase::obtain(pass.passphrase_file.as_deref(), true)?;
            ca::import(
                &cert_bytes,
                &key_text,
                key_pass.as_ref().map(|k| k.as_bytes()),
                chain_bytes.as_deref(),
                p.as_bytes(),
            )
        }
        KeySource::Token(uri) => {
            let uri = Pkcs11Uri::parse(uri)?;
            let pin = crate::passphrase::obtain_pin(pass.pin_file.as_deref())?;
            TokenKey::open(&uri, &pin)
                .and_then(|k| ca::import_token(&cert_bytes, &k, chain_bytes.as_deref()))
        }
    }
    .with_context(|| format!("cannot import CA from {}", cert.display()))?;
    let name = name.unwrap_or_else(|| {
        info_of(&material.issuing_der)
            .map(|i| i.subject)
            .unwrap_or_else(|_| "imported".into())
    });
    finish_install(ctx, &mut reg, &name, &material, EventKind::CaImported)
}

fn finish_install(
    ctx: &Ctx,
    reg: &mut crate::store::Store,
    name: &str,
    material: &ca::CaMaterial,
    kind: EventKind,
) -> anyhow::Result<i32> {
    let config = ctx.config()?;
    let actor = ctx.actor(&config);
    let dir = ctx.home.ca_dir();
    let crate::app::ca::Installed { root, issuing } =
        crate::app::ca::record(reg, &dir, name, material, kind, &actor)?;
    let issuing_key = match &material.keys {
        ca::CaKeys::Token { issuing, .. } => Some(issuing.clone()),
        ca::CaKeys::Files { .. } => None,
    };
    if ctx.json {
        print_json(&serde_json::json!({
            "name": name,
            "root": root,
            "issuing": issuing,
            "key_uri": issuing_key,
        }))?;
    } else {
        println!("root CA     {}", root.subject);
        println!("issuing CA  {}", issuing.subject);
        match issuing_key {
            Some(uri) => println!("issuing key {uri}"),
            None => println!("keys encrypted in {}", dir.display()),
        }
    }
    Ok(0)
}

#[derive(Serialize)]
struct CaView {
    role: String,
    name: String,
    subject: String,
    not_before: String,
    not_after: String,
    fingerprint_sha256: String,
    ski: Option<String>,
    key_file: Option<String>,
    active: bool,
}

fn show(ctx: &Ctx) -> anyhow::Result<i32> {
    let reg = ctx.registry_read()?;
    crate::app::ca::active_issuing(&reg)?;
    let views: Vec<CaView> = cas::all_cas(reg.reader())?
        .into_iter()
        .map(|c| CaView {
            role: c.role.as_str().into(),
            name: c.name,
            subject: c.subject,
            not_before: ts(c.not_before),
            not_after: ts(c.not_after),
            fingerprint_sha256: c.fingerprint,
            ski: c.ski,
            key_file: c.key_file,
            active: c.active,
        })
        .collect();
    if ctx.json {
        print_json(&views)?;
    } else {
        for v in &views {
            println!("{} CA{}", v.role, if v.active { "" } else { " (inactive)" });
            println!("  subject      {}", v.subject);
            println!("  valid        {} .. {}", v.not_before, v.not_after);
            println!("  sha256       {}", colon_hex(&v.fingerprint_sha256));
            if let Some(s) = &v.ski {
                println!("  key id       {}", colon_hex(s));
            }
            if let Some(uri) = v.key_file.as_deref().filter(|k| k.starts_with("pkcs11:")) {
                println!("  key          {uri}");
            }
        }
    }
    Ok(0)
}

fn export(ctx: &Ctx, root: bool, issuing: bool, out: Option<PathBuf>) -> anyhow::Result<i32> {
    let reg = ctx.registry_read()?;
    let issuing_rec = crate::app::ca::active_issuing(&reg)?;
    let pem = if root {
        let r = cas::active_ca(reg.reader(), CaRole::Root)?
            .ok_or_else(|| Error::not_found("no root CA recorded"))?;
        to_pem("CERTIFICATE", &r.der)
    } else if issuing {
        to_pem("CERTIFICATE", &issuing_rec.der)
    } else {
        let p = ctx.home.ca_dir().join(CHAIN);
        fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?
    };
    match out {
        Some(path) => outfile::write_file_atomic(&path, pem.as_bytes(), 0o644, true)?,
        None => print!("{pem}"),
    }
    Ok(0)
}
