//! Verification marks: a keyed MAC cradle stores next to each certificate it records
//! itself, so that `cradle audit` can skip the ECDSA verification of certificates whose
//! stored DER is byte-for-byte what cradle issued.
//!
//! The threat the `cert-not-chained` check exists for is someone who can write the
//! registry file but cannot read the CA folder. The key lives in the CA folder
//! (`ca/audit.key`, 0600, never in the registry or logs), so such a person cannot
//! make a mark for a row of their own: a row without a valid mark gets the full
//! signature verification.

use std::fs;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use ring::hmac;

use crate::error::{Error, Result};
use crate::outfile;

/// File name of the key under the CA directory.
pub const AUDIT_KEY: &str = "audit.key";

const KEY_LEN: usize = 32;

/// Domain separation, so the key can never be confused with another use of HMAC.
const LABEL: &[u8] = b"cradle certificate mark v1\0";

/// The HMAC-SHA256 key behind verification marks.
#[derive(Clone)]
pub struct AuditKey {
    key: hmac::Key,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

pub fn key_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(AUDIT_KEY)
}

impl AuditKey {
    fn from_bytes(path: &Path, bytes: &[u8]) -> Result<AuditKey> {
        if bytes.len() != KEY_LEN {
            return Err(Error::crypto(format!(
                "{} is not a {KEY_LEN}-byte key ({} bytes)",
                path.display(),
                bytes.len()
            )));
        }
        Ok(AuditKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// Reads the key; `None` when the file does not exist. Never creates it (the audit
    /// only reads).
    pub fn load(ca_dir: &Path) -> Result<Option<AuditKey>> {
        let path = key_path(ca_dir);
        match fs::read(&path) {
            Ok(b) => {
                let b = zeroize::Zeroizing::new(b);
                AuditKey::from_bytes(&path, &b).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Reads the key, creating it (random, 0600, atomically) on first use.
    pub fn load_or_create(ca_dir: &Path) -> Result<AuditKey> {
        if let Some(k) = AuditKey::load(ca_dir)? {
            return Ok(k);
        }
        let path = key_path(ca_dir);
        let mut b = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut b[..]);
        match outfile::write_secret_file(&path, &b[..]) {
            Ok(()) => AuditKey::from_bytes(&path, &b[..]),
            // Another cradle process created it first: use theirs.
            Err(_) if path.exists() => AuditKey::load(ca_dir)?
                .ok_or_else(|| Error::crypto(format!("{} vanished", path.display()))),
            Err(e) => Err(e),
        }
    }

    fn context(&self, cert_fingerprint: &str, ca_fingerprint: &str) -> hmac::Context {
        let mut c = hmac::Context::with_key(&self.key);
        c.update(LABEL);
        // Both are fixed-length hex SHA-256, so the concatenation is unambiguous; the
        // separator keeps it so for malformed input too.
        c.update(cert_fingerprint.as_bytes());
        c.update(b"\0");
        c.update(ca_fingerprint.as_bytes());
        c
    }

    /// The mark of a certificate (hex SHA-256 of its DER) issued by a CA (hex SHA-256
    /// of the CA certificate's DER).
    pub fn mark(&self, cert_fingerprint: &str, ca_fingerprint: &str) -> Vec<u8> {
        self.context(cert_fingerprint, ca_fingerprint)
            .sign()
            .as_ref()
            .to_vec()
    }

    /// Whether `mark` is the mark of this certificate and CA (constant-time compare).
    pub fn verify(&self, cert_fingerprint: &str, ca_fingerprint: &str, mark: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(LABEL.len() + 2 * 64 + 1);
        msg.extend_from_slice(LABEL);
        msg.extend_from_slice(cert_fingerprint.as_bytes());
        msg.push(0);
        msg.extend_from_slice(ca_fingerprint.as_bytes());
        hmac::verify(&self.key, &msg, mark).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_0600_and_marks_verify() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AuditKey::load(dir.path()).unwrap().is_none());
        let k = AuditKey::load_or_create(dir.path()).unwrap();
        let meta = fs::metadata(key_path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let again = AuditKey::load_or_create(dir.path()).unwrap();
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        let m = k.mark(&a, &b);
        assert_eq!(m.len(), 32);
        assert!(again.verify(&a, &b, &m));
        assert!(!again.verify(&b, &a, &m));
        assert!(!again.verify(&a, &a, &m));
        assert!(!again.verify(&a, &b, &m[..31]));
        let other = tempfile::tempdir().unwrap();
        let k2 = AuditKey::load_or_create(other.path()).unwrap();
        assert!(!k2.verify(&a, &b, &m));
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(key_path(dir.path()), b"short").unwrap();
        let e = AuditKey::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a 32-byte key"), "{e}");
    }
}
