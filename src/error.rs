//! Typed errors for the library, each mapped to a documented exit code.

use std::path::PathBuf;

/// Exit codes shared by every command (documented in the README and cradle(1)).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The command ran, but found problems or some items failed (audit findings,
    /// a certificate that does not verify, a device that did not PASS).
    pub const FAILED: i32 = 1;
    /// Usage error (bad flags or arguments) or an unclassified runtime error.
    pub const USAGE: i32 = 2;
    /// Invalid input data: CSV, CSR, certificate, profile/template, device reply.
    pub const INPUT: i32 = 3;
    /// Registry problem: not initialised, corrupt, foreign, newer schema, locked.
    pub const REGISTRY: i32 = 4;
    /// Key or CA problem: wrong passphrase or token PIN, PIN locked, key/certificate
    /// mismatch, key not on the token, not a CA.
    pub const CRYPTO: i32 = 5;
    /// Device or serial-line problem: timeout, protocol error, port unavailable; also a
    /// label printer that cannot be reached, or an absent PKCS#11 token.
    pub const DEVICE: i32 = 6;
    /// Conflict with existing state: already exists, duplicate, invalid transition.
    pub const CONFLICT: i32 = 7;
    /// File system problem: a file cannot be read or written.
    pub const IO: i32 = 8;
    /// Stopped by SIGINT/SIGTERM/SIGHUP after finishing or abandoning the work in hand
    /// cleanly (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Arguments that cannot work together (exit 2, as clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Input(String),
    #[error("{path}:{line}: {msg}")]
    InputAt {
        path: String,
        line: usize,
        msg: String,
    },
    /// The registry store refused or failed (busy, missing, corrupt, a constraint).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    NotInitialised(String),
    #[error("{0}")]
    Crypto(String),
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Device(String),
    /// Revocations were committed, but the CRL that must follow them was not
    /// published; the exit code is the cause's.
    #[error("the revocations are recorded, but the CRL could not be published (run `cradle ca crl` to retry)")]
    CrlNotPublished(#[source] Box<Error>),
    /// The operator stopped the command (SIGINT/SIGTERM) at a safe point.
    #[error("{0}")]
    Interrupted(String),
    /// The CRL is published, but the pre-signed OCSP responses were not refreshed;
    /// the exit code is the cause's.
    #[error("the CRL is published, but the OCSP responses in {} could not be refreshed (run `cradle ca ocsp` to retry)", dir.display())]
    OcspNotRefreshed {
        dir: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// A bug or an impossible state inside cradle (exit 2): nothing was changed.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
    pub fn input_at(path: impl std::fmt::Display, line: usize, msg: impl Into<String>) -> Self {
        Error::InputAt {
            path: path.to_string(),
            line,
            msg: msg.into(),
        }
    }
    pub fn crypto(msg: impl Into<String>) -> Self {
        Error::Crypto(msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Error::Conflict(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The documented exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Input(_) | Error::InputAt { .. } => exit::INPUT,
            Error::NotInitialised(_) => exit::REGISTRY,
            Error::Store(crate::store::StoreError::Constraint(_)) => exit::CONFLICT,
            Error::Store(crate::store::StoreError::Unsupported(_)) => exit::USAGE,
            Error::Store(_) => exit::REGISTRY,
            Error::Crypto(_) | Error::WrongPassphrase(_) => exit::CRYPTO,
            Error::Conflict(_) => exit::CONFLICT,
            Error::NotFound(_) => exit::INPUT,
            Error::Device(_) => exit::DEVICE,
            Error::Io { .. } => exit::IO,
            Error::Interrupted(_) => exit::INTERRUPTED,
            Error::Internal(_) => exit::USAGE,
            Error::CrlNotPublished(cause) => cause.exit_code(),
            Error::OcspNotRefreshed { source, .. } => source.exit_code(),
        }
    }
}

/// Picks the exit code for an error chain produced by a command handler.
pub fn exit_code_for(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return e.exit_code();
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return exit::IO;
        }
    }
    exit::USAGE
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
