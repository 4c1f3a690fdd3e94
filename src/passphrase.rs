//! Where the CA passphrase comes from: `--passphrase-file`, `CRADLE_CA_PASSPHRASE`, or
//! a prompt on the terminal. Never a command-line argument (it would show in `ps`).

use std::io::IsTerminal;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const ENV_VAR: &str = "CRADLE_CA_PASSPHRASE";
const MAX_LEN: usize = 1024;
/// Shortest passphrase a new CA key takes. Characters, not bytes. The key file is
/// worth an offline guessing attack, and PBKDF2 only slows one down.
pub const MIN_NEW_LEN: usize = 12;

/// Reads the passphrase. `confirm` asks twice when prompting (a new CA).
pub fn obtain(file: Option<&Path>, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = file {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        warn_if_shared(path, &meta);
        if meta.len() > MAX_LEN as u64 + 2 {
            return Err(Error::input(format!(
                "{}: passphrase file is larger than {MAX_LEN} bytes",
                path.display()
            )));
        }
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        let text = std::str::from_utf8(&raw).map_err(|_| {
            Error::input(format!("{}: passphrase is not valid UTF-8", path.display()))
        })?;
        // The first line only, without its line ending.
        let line = text.split(['\n', '\r']).next().unwrap_or("");
        return check(
            Zeroizing::new(line.to_string()),
            &path.display().to_string(),
            confirm,
        );
    }
    if let Ok(v) = std::env::var(ENV_VAR) {
        return check(Zeroizing::new(v), ENV_VAR, confirm);
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Error::input(format!(
            "the CA key needs a passphrase: use --passphrase-file FILE or set {ENV_VAR} (no terminal to prompt on)"
        )));
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("CA passphrase: ").map_err(|e| Error::io("/dev/tty", e))?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Repeat CA passphrase: ")
                .map_err(|e| Error::io("/dev/tty", e))?,
        );
        if *first != *again {
            return Err(Error::input("passphrases do not match"));
        }
    }
    check(first, "prompt", confirm)
}

/// A passphrase file that others may read is no secret: say so (on stderr), once.
fn warn_if_shared(path: &Path, meta: &std::fs::Metadata) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: passphrase file {} is readable by others (mode {mode:04o}); chmod 600 it",
            path.display()
        );
    }
}

/// `new`: the passphrase will protect a new key, so it must be long enough.
fn check(p: Zeroizing<String>, from: &str, new: bool) -> Result<Zeroizing<String>> {
    if p.is_empty() {
        return Err(Error::input(format!("empty CA passphrase from {from}")));
    }
    if new && p.chars().count() < MIN_NEW_LEN {
        return Err(Error::input(format!(
            "CA passphrase from {from} is {} characters; a new CA key needs at least {MIN_NEW_LEN}",
            p.chars().count()
        )));
    }
    if p.len() > MAX_LEN {
        return Err(Error::input(format!(
            "CA passphrase from {from} is longer than {MAX_LEN} bytes"
        )));
    }
    if p.chars().any(|c| c == '\0') {
        return Err(Error::input(format!(
            "CA passphrase from {from} contains a NUL byte"
        )));
    }
    Ok(p)
}
