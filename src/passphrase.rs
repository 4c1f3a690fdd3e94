//! Where the CA's secrets come from: the passphrase of its key files
//! (`--passphrase-file`, `CRADLE_CA_PASSPHRASE`) or the PIN of the PKCS#11 token that
//! holds its keys (`--pin-file`, `CRADLE_PKCS11_PIN`), else a prompt on the terminal.
//! Never a command-line argument (it would show in `ps`).

use std::io::IsTerminal;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const ENV_VAR: &str = "CRADLE_CA_PASSPHRASE";
pub const PIN_ENV_VAR: &str = "CRADLE_PKCS11_PIN";
const MAX_LEN: usize = 1024;
/// Shortest passphrase a new CA key takes. Characters, not bytes. The key file is
/// worth an offline guessing attack, and PBKDF2 only slows one down.
pub const MIN_NEW_LEN: usize = 12;

/// One kind of secret: what it is called in messages and where it may come from.
struct Secret {
    /// "CA passphrase", "token PIN".
    name: &'static str,
    /// The error when there is nowhere to read it from.
    needed: &'static str,
    flag: &'static str,
    env_var: &'static str,
}

const PASSPHRASE: Secret = Secret {
    name: "CA passphrase",
    needed: "the CA key needs a passphrase",
    flag: "--passphrase-file",
    env_var: ENV_VAR,
};

const PIN: Secret = Secret {
    name: "token PIN",
    needed: "the CA key on the PKCS#11 token needs the token's PIN",
    flag: "--pin-file",
    env_var: PIN_ENV_VAR,
};

/// Reads the passphrase. `confirm` asks twice when prompting (a new CA).
pub fn obtain(file: Option<&Path>, confirm: bool) -> Result<Zeroizing<String>> {
    read(&PASSPHRASE, file, confirm)
}

/// Reads the PIN of the PKCS#11 token (user PIN).
pub fn obtain_pin(file: Option<&Path>) -> Result<Zeroizing<String>> {
    read(&PIN, file, false)
}

fn read(s: &Secret, file: Option<&Path>, confirm: bool) -> Result<Zeroizing<String>> {
    let name = s.name.split(' ').next_back().unwrap_or(s.name);
    if let Some(path) = file {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        warn_if_shared(path, &meta, name);
        if meta.len() > MAX_LEN as u64 + 2 {
            return Err(Error::input(format!(
                "{}: {name} file is larger than {MAX_LEN} bytes",
                path.display()
            )));
        }
        let raw = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        let text = std::str::from_utf8(&raw)
            .map_err(|_| Error::input(format!("{}: {name} is not valid UTF-8", path.display())))?;
        // The first line only, without its line ending.
        let line = text.split(['\n', '\r']).next().unwrap_or("");
        return check(
            s,
            Zeroizing::new(line.to_string()),
            &path.display().to_string(),
            confirm,
        );
    }
    if let Ok(v) = std::env::var(s.env_var) {
        return check(s, Zeroizing::new(v), s.env_var, confirm);
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Error::input(format!(
            "{}: use {} FILE or set {} (no terminal to prompt on)",
            s.needed, s.flag, s.env_var
        )));
    }
    let prompt = |p: &str| {
        rpassword::prompt_password(p)
            .map(Zeroizing::new)
            .map_err(|e| Error::io("/dev/tty", e))
    };
    let first = prompt(&format!("{}: ", s.name))?;
    if confirm {
        let again = prompt(&format!("Repeat {}: ", s.name))?;
        if *first != *again {
            return Err(Error::input(format!("{name}s do not match")));
        }
    }
    check(s, first, "prompt", confirm)
}

/// A secret's file that others may read is no secret: say so (on stderr), once.
fn warn_if_shared(path: &Path, meta: &std::fs::Metadata, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        eprintln!(
            "warning: {name} file {} is readable by others (mode {mode:04o}); chmod 600 it",
            path.display()
        );
    }
}

/// `new`: the secret will protect a new key, so it must be long enough.
fn check(s: &Secret, p: Zeroizing<String>, from: &str, new: bool) -> Result<Zeroizing<String>> {
    let name = s.name;
    if p.is_empty() {
        return Err(Error::input(format!("empty {name} from {from}")));
    }
    if new && p.chars().count() < MIN_NEW_LEN {
        return Err(Error::input(format!(
            "CA passphrase from {from} is {} characters; a new CA key needs at least {MIN_NEW_LEN}",
            p.chars().count()
        )));
    }
    if p.len() > MAX_LEN {
        return Err(Error::input(format!(
            "{name} from {from} is longer than {MAX_LEN} bytes"
        )));
    }
    if p.chars().any(|c| c == '\0') {
        return Err(Error::input(format!(
            "{name} from {from} contains a NUL byte"
        )));
    }
    Ok(p)
}
