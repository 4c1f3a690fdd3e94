//! `cradle ca ocsp`, `cradle ca ocsp-signer` and `cradle ocsp serve`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use clap::Subcommand;

use super::common::{print_json, ts, Ctx, PassArgs};
use crate::app::ocsp::responder::{Answer, Live, Presigned};
use crate::app::ocsp::{self, http, Delegate};
use crate::error::Error;
use crate::pki::ocsp::{IssuerHashes, DELEGATE_DAYS};
use crate::pki::signer::CaSigner;
use crate::store::Store;

/// `cradle ca ocsp`
#[derive(Debug, clap::Args)]
pub struct PresignArgs {
    /// Directory for the responses (created if missing); default: ocsp_dir from config.toml
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Sign with the delegated OCSP signing certificate (`cradle ca ocsp-signer`), not the CA
    #[arg(long)]
    delegate: bool,
    #[command(flatten)]
    pass: PassArgs,
}

/// `cradle ca ocsp-signer`
#[derive(Debug, clap::Args)]
pub struct SignerArgs {
    /// Days the certificate is valid (1-366; it carries ocsp-nocheck, so keep it short)
    #[arg(long, default_value_t = DELEGATE_DAYS)]
    days: u32,
    #[command(flatten)]
    pass: PassArgs,
}

#[derive(Debug, Subcommand)]
pub enum OcspCommand {
    /// Answer OCSP requests over HTTP (RFC 6960 GET and POST, RFC 5019)
    #[command(
        after_help = "Answers live from the registry by default: each response is signed when asked, with\nthe nonce echoed when the request has one; serials the CA never issued are 'unknown', a\nCertID of another issuer gets 'unauthorized', a request that is not one 'malformedRequest'.\nWith --from DIR it serves the pre-signed responses of `cradle ca ocsp` as they are (no key\nneeded; nonces are not echoed; a serial without a file gets 'unauthorized').\nRequests: POST with an application/ocsp-request body (at most 64 KiB), or GET\n/<url-encoded base64 of the DER request>. One request per connection, 5 s timeouts,\n64 connections at once. Logs one line per request on stderr; stops on SIGTERM or Ctrl-C.\nWith --listen HOST:0 a free port is picked; the line 'listening on http://HOST:PORT/'\n(or, with --json, a JSON object on stdout) says which.\n\nExamples:\n  cradle ocsp serve --listen 127.0.0.1:8080 --passphrase-file ca.pass\n  cradle ocsp serve --listen 0.0.0.0:8080 --delegate\n  cradle ocsp serve --listen 127.0.0.1:8080 --from /srv/ocsp\n  openssl ocsp -issuer issuing.pem -cert dev.pem -url http://127.0.0.1:8080 -CAfile root.pem"
    )]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Serve the pre-signed responses in DIR (from `cradle ca ocsp`) instead of the registry
    #[arg(long, value_name = "DIR", conflicts_with = "delegate")]
    from: Option<PathBuf>,
    /// Sign with the delegated OCSP signing certificate, not the CA
    #[arg(long)]
    delegate: bool,
    #[command(flatten)]
    pass: PassArgs,
}

pub fn run(ctx: &Ctx, cmd: OcspCommand) -> anyhow::Result<i32> {
    match cmd {
        OcspCommand::Serve(a) => serve(ctx, a),
    }
}

/// The CA, and the delegate when asked for. The delegate's key is encrypted with the
/// CA passphrase, read a second time (a second prompt only on a terminal).
fn unlock(
    ctx: &Ctx,
    reg: &Store,
    pass: &PassArgs,
    delegate: bool,
) -> anyhow::Result<(CaSigner, Option<Delegate>)> {
    let signer = ctx.signer(reg, pass)?;
    let delegate = if delegate {
        let p = crate::passphrase::obtain(pass.passphrase_file.as_deref(), false)?;
        Some(
            ocsp::load_signer(&ctx.home.ca_dir(), &signer, p.as_bytes())
                .context("cannot unlock the OCSP signing certificate")?,
        )
    } else {
        None
    };
    Ok((signer, delegate))
}

pub fn presign(ctx: &Ctx, a: PresignArgs) -> anyhow::Result<i32> {
    let config = ctx.config()?;
    let dir = match a.out {
        Some(d) => d,
        None if !config.ocsp_dir.trim().is_empty() => ctx.home.root.join(config.ocsp_dir.trim()),
        None => {
            return Err(
                Error::usage("--out DIR is required (or set ocsp_dir in config.toml)").into(),
            )
        }
    };
    let reg = ctx.registry_read()?;
    let (signer, delegate) = unlock(ctx, &reg, &a.pass, a.delegate)?;
    let done = ocsp::presign(
        reg.reader(),
        &signer,
        delegate.as_ref(),
        &dir,
        config.crl_next_update_days,
    )
    .with_context(|| format!("cannot pre-sign OCSP responses into {}", dir.display()))?;
    if ctx.json {
        print_json(&done)?;
    } else {
        let i = &done.index;
        println!(
            "{} OCSP response{} ({} good, {} revoked) signed by {} into {}",
            i.responses,
            if i.responses == 1 { "" } else { "s" },
            i.good,
            i.revoked,
            i.signed_by,
            done.dir.display()
        );
        println!("valid until {} (the next CRL update)", i.next_update);
    }
    Ok(0)
}

pub fn issue_signer(ctx: &Ctx, a: SignerArgs) -> anyhow::Result<i32> {
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let signer = ctx.signer(&reg, &a.pass)?;
    let p = crate::passphrase::obtain(a.pass.passphrase_file.as_deref(), false)?;
    let dir = ctx.home.ca_dir();
    let info = ocsp::issue_signer(
        &mut reg,
        &dir,
        &signer,
        &config.org,
        a.days,
        p.as_bytes(),
        &ctx.actor(&config),
    )?;
    let cert = dir.join(ocsp::SIGNER_CERT);
    if ctx.json {
        print_json(&serde_json::json!({"certificate": info, "file": cert}))?;
    } else {
        println!("OCSP signing certificate  {}", info.subject);
        println!("  valid until             {}", ts(info.not_after));
        println!("  written to              {}", cert.display());
        println!(
            "  key (encrypted)         {}",
            dir.join(ocsp::SIGNER_KEY).display()
        );
    }
    Ok(0)
}

fn serve(ctx: &Ctx, a: ServeArgs) -> anyhow::Result<i32> {
    let stop = crate::signals::stop_flag();
    // Check everything before binding, so a bad home or passphrase never opens a port.
    let holder: (CaSigner, Option<Delegate>);
    let (answer, what): (Box<dyn Answer + '_>, String) = match &a.from {
        Some(dir) => {
            let p = Presigned::open(dir.clone())
                .with_context(|| format!("cannot serve {}", dir.display()))?;
            (
                Box::new(p),
                format!("pre-signed responses in {}", dir.display()),
            )
        }
        None => {
            let config = ctx.config()?;
            let reg = ctx.registry_read()?;
            holder = unlock(ctx, &reg, &a.pass, a.delegate)?;
            let (signer, delegate) = &holder;
            let by = delegate
                .as_ref()
                .map_or(signer.subject.clone(), |d| d.info.subject.clone());
            let live = Live {
                store: Mutex::new(reg),
                ca_id: signer.id,
                issuer: IssuerHashes::of(&signer.cert_der)?,
                signer: ocsp::response_signer(signer, delegate.as_ref())?,
                days: config.crl_next_update_days,
            };
            (
                Box::new(live),
                format!("live from the registry, signed by {by}"),
            )
        }
    };
    let listener = http::bind(&a.listen)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("the listening address: {e}")))?;
    if ctx.json {
        print_json(&serde_json::json!({
            "listening": addr.to_string(),
            "url": format!("http://{addr}/"),
            "serving": what,
        }))?;
        std::io::stdout().flush()?;
    }
    eprintln!("listening on http://{addr}/ ({what})");
    let log = |line: &str| eprintln!("{line}");
    let served = http::serve(
        &listener,
        answer.as_ref(),
        http::Limits::default(),
        stop,
        &log,
    )?;
    eprintln!(
        "stopped after {served} request{}",
        if served == 1 { "" } else { "s" }
    );
    Ok(0)
}
