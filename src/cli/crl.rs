//! `cradle ca crl`: issue and publish the CRL of the issuing CA.

use std::io::Write;
use std::path::PathBuf;

use super::common::{print_json, Ctx, PassArgs};
use super::retire::print_crl_line;
use crate::app::retire::crl;
use crate::outfile;
use crate::pki::cert::to_pem;

#[derive(Debug, clap::Args)]
pub struct CrlArgs {
    /// Also write the CRL to FILE ('-' for stdout); the configured crl_path is always refreshed
    #[arg(short, long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write --out as DER instead of PEM
    #[arg(long, requires = "out")]
    der: bool,
    #[command(flatten)]
    pass: PassArgs,
}

pub fn run(ctx: &Ctx, a: CrlArgs) -> anyhow::Result<i32> {
    let mut reg = ctx.registry()?;
    let config = ctx.config()?;
    let signer = ctx.signer(&reg, &a.pass)?;
    let actor = ctx.actor(&config);
    let c = crl::issue(
        &mut reg,
        &signer,
        &crl::Publication::configured(&ctx.home, &config),
        &actor,
    )?;
    let body = if a.der {
        c.der.clone()
    } else {
        to_pem("X509 CRL", &c.der).into_bytes()
    };
    let to_stdout = a.out.as_deref().is_some_and(|p| p.as_os_str() == "-");
    match &a.out {
        Some(_) if to_stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(&body)?;
            o.flush()?;
            return Ok(0);
        }
        Some(p) => outfile::write_file_atomic(p, &body, 0o644, true).map_err(|e| {
            anyhow::Error::new(e).context("the CRL is issued and published, but --out failed")
        })?,
        None => {}
    }
    if ctx.json {
        print_json(&serde_json::json!({"crl": c, "out": a.out}))?;
    } else {
        print_crl_line(&c);
        if let Some(p) = &a.out {
            println!(
                "also written to {} ({})",
                p.display(),
                if a.der { "DER" } else { "PEM" }
            );
        }
    }
    Ok(0)
}
