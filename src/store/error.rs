//! The store's own errors: what a caller can act on, never a `rusqlite::Error`.

use std::path::PathBuf;

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another station held the write lock for longer than the busy timeout.
    #[error("registry is busy (locked by another station) for longer than the timeout")]
    Busy,
    /// No registry where one was expected.
    #[error("{0}")]
    NotInitialised(String),
    /// The file is not a usable registry: corrupt, foreign, or from a newer cradle.
    #[error("registry {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// The registry cannot be written (read-only file, directory or file system) and
    /// the command writes.
    #[error("registry {0} is read-only (file, directory or file system): this command writes to it; run it where the registry is writable")]
    ReadOnly(PathBuf),
    /// A uniqueness or reference rule of the schema refused the change.
    #[error("database error: {0}")]
    Constraint(String),
    /// The PostgreSQL registry cannot be reached or refused this station: host down,
    /// wrong password, no such database, a timeout (the message names the URL).
    #[error("{0}")]
    Unreachable(String),
    /// The command does not work on this kind of registry yet (exit 2).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else the database reported.
    #[error("database error: {0}")]
    Other(String),
}

impl StoreError {
    pub(super) fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        // A PostgreSQL failure carried through the SQL layer (`conn::PgFailure`).
        let e = match e {
            rusqlite::Error::ToSqlConversionFailure(b) => {
                match b.downcast::<super::conn::PgFailure>() {
                    Ok(pf) => return pf.0,
                    Err(b) => rusqlite::Error::ToSqlConversionFailure(b),
                }
            }
            e => e,
        };
        if is_busy(&e) {
            return StoreError::Busy;
        }
        match &e {
            // A value that does not fit its column's meaning (a status no lifecycle has,
            // a number where text belongs): damage or an edit behind cradle's back.
            rusqlite::Error::FromSqlConversionFailure(_, _, inner) => {
                return StoreError::Other(damaged(inner))
            }
            rusqlite::Error::InvalidColumnType(_, name, ty) => {
                return StoreError::Other(damaged(format!("column {name} holds a {ty}")))
            }
            _ => {}
        }
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => StoreError::Constraint(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// The message for a row that is not what cradle wrote.
pub(super) fn damaged(what: impl std::fmt::Display) -> String {
    format!("a registry row is damaged: {what} (the file was changed outside cradle; run `cradle audit`)")
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::Store(e.into())
    }
}

/// A failure opening or checking the file at `path`, named by what it means.
pub(super) fn file_err(path: &std::path::Path, e: rusqlite::Error) -> Error {
    let msg = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "not a SQLite database (corrupt or foreign file)".to_string()
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt) => "database file is corrupt".to_string(),
        _ if is_busy(&e) => return Error::Store(StoreError::Busy),
        Some(rusqlite::ErrorCode::ReadOnly) => {
            return Error::Store(StoreError::ReadOnly(path.to_path_buf()))
        }
        _ => e.to_string(),
    };
    Error::Store(StoreError::corrupt(path, msg))
}
