//! `cradle conformance`: one pass/fail line per rule of cradle-protocol(7).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::common::{print_json, Ctx};
use crate::app::conformance::{self, Options, Verdict};
use crate::error::Error;

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// Serial port (or pty) of the device under test
    #[arg(long, value_name = "PATH")]
    pub port: PathBuf,
    /// Line rate of the port
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Seconds the device may take to answer one request
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// Go on with a device that holds an identity (keyed or locked): it is wiped
    #[arg(long)]
    pub force: bool,
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    port: String,
    passed: usize,
    failed: usize,
    rules: &'a [Verdict],
}

pub fn run(ctx: &Ctx, a: ConformanceArgs) -> anyhow::Result<i32> {
    if !(a.timeout > 0.0 && a.timeout <= 3600.0) {
        return Err(Error::input("--timeout must be between 0 and 3600 seconds").into());
    }
    let o = Options {
        port: a.port.clone(),
        baud: a.baud,
        timeout: Duration::from_secs_f64(a.timeout),
        force: a.force,
    };
    let json = ctx.json;
    let mut out = std::io::stdout();
    let verdicts = conformance::run(&o, &mut |v| {
        if !json {
            // As each rule ends: a slow device shows where it is.
            let _ = writeln!(
                out,
                "{} {:<22} {}",
                if v.pass { "PASS" } else { "FAIL" },
                v.rule,
                v.detail
            );
            let _ = out.flush();
        }
    })?;
    let failed = verdicts.iter().filter(|v| !v.pass).count();
    if json {
        print_json(&Summary {
            port: a.port.display().to_string(),
            passed: verdicts.len() - failed,
            failed,
            rules: &verdicts,
        })?;
    } else {
        println!(
            "{} of {} rules pass{}",
            verdicts.len() - failed,
            verdicts.len(),
            if failed == 0 { "" } else { ": not conformant" }
        );
    }
    Ok(if failed == 0 {
        crate::error::exit::OK
    } else {
        crate::error::exit::FAILED
    })
}
