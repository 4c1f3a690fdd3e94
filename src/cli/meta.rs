//! Commands about cradle itself: profiles, completions, man pages.

use std::fs;
use std::path::Path;

use clap::{CommandFactory, Subcommand};
use serde::Serialize;

use super::common::{print_json, print_table, Ctx};
use super::Cli;
use crate::error::Error;
use crate::pki::profile::{Profile, BUILTIN};

#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// List the profiles available in this home and built in
    List,
    /// Check a profile file and print what it requires
    #[command(after_help = "Example:\n  cradle profile check templates/device.toml")]
    Check {
        /// Profile name or .toml path
        profile: String,
    },
}

#[derive(Serialize)]
struct ProfileView {
    name: String,
    source: String,
    description: String,
    ca: bool,
    variables: Vec<String>,
}

fn view(p: &Profile) -> ProfileView {
    ProfileView {
        name: p.name.clone(),
        source: p.source.clone(),
        description: p.description.clone(),
        ca: p.is_ca,
        variables: p.required_variables(),
    }
}

pub fn profile(ctx: &Ctx, cmd: ProfileCommand) -> anyhow::Result<i32> {
    let dir = ctx.templates();
    match cmd {
        ProfileCommand::List => {
            let mut names: Vec<String> = BUILTIN.iter().map(|(n, _)| n.to_string()).collect();
            if let Some(d) = &dir {
                for e in fs::read_dir(d).map_err(|e| Error::io(d, e))?.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "toml") {
                        if let Some(s) = p.file_stem() {
                            let s = s.to_string_lossy().into_owned();
                            if !names.contains(&s) {
                                names.push(s);
                            }
                        }
                    }
                }
            }
            let mut views = Vec::new();
            for n in names {
                views.push(view(&Profile::load(&n, dir.as_deref())?));
            }
            if ctx.json {
                print_json(&views)?;
            } else {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| vec![v.name.clone(), v.source.clone(), v.description.clone()])
                    .collect();
                print_table(&["PROFILE", "SOURCE", "DESCRIPTION"], &rows)?;
            }
        }
        ProfileCommand::Check { profile } => {
            let p = Profile::load(&profile, dir.as_deref())?;
            if ctx.json {
                print_json(&view(&p))?;
            } else {
                println!("{}: ok ({})", p.source, p.description);
                println!("  needs: {}", p.required_variables().join(", "));
            }
        }
    }
    Ok(0)
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut cmd = Cli::command();
    // clap_complete panics on a write error; render first, then write (a closed pipe,
    // `cradle completions bash | head`, is then an io::Error main treats as success).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "cradle", &mut buf);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &buf)?;
    Ok(0)
}

/// Renders one man page per (sub)command: cradle.1, cradle-ca.1, cradle-ca-init.1, …
pub fn man(out: &Path) -> anyhow::Result<i32> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cmd = Cli::command();
    render_man(&cmd, "cradle", out)?;
    Ok(0)
}

fn render_man(cmd: &clap::Command, name: &str, out: &Path) -> anyhow::Result<()> {
    let page = cmd
        .clone()
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    let path = out.join(format!("{name}.1"));
    fs::write(&path, buf).map_err(|e| Error::io(&path, e))?;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        render_man(sub, &format!("{name}-{}", sub.get_name()), out)?;
    }
    Ok(())
}
