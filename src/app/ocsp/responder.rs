//! The answers of `cradle ocsp serve`: live from the registry (signed per request,
//! nonce echoed) or from a pre-signed directory (RFC 5019: the stored response, as is).

use std::path::PathBuf;
use std::sync::Mutex;

use x509_ocsp::OcspResponseStatus;

use super::{response_path, status_of, validity, Index};
use crate::error::{Error, Result};
use crate::pki::ocsp::{self, IssuerHashes, ResponseSigner, Status};
use crate::store::ocsp as so;
use crate::store::Store;

/// One HTTP body to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub body: Vec<u8>,
    /// Seconds a cache may keep it (a response without a nonce, per RFC 5019 §6).
    pub max_age: Option<u64>,
    /// What to log: the OCSP status and the serials asked about.
    pub summary: String,
}

impl Reply {
    fn error(status: OcspResponseStatus, why: &str) -> Reply {
        Reply {
            body: ocsp::error_response(status),
            max_age: None,
            summary: format!("{status:?}: {why}"),
        }
    }
}

/// Answers OCSP requests (DER in, DER out); shared by the server's threads.
pub trait Answer: Sync {
    fn answer(&self, request: &[u8]) -> Reply;
}

/// Live answers: the registry's current status, signed now.
pub struct Live<'a> {
    pub store: Mutex<Store>,
    pub ca_id: i64,
    pub issuer: IssuerHashes,
    pub signer: ResponseSigner<'a>,
    /// Validity when no CRL gives a nextUpdate (`crl_next_update_days`).
    pub days: u32,
}

impl Live<'_> {
    fn try_answer(&self, req: ocsp::Request) -> Result<Reply> {
        let (answers, when) = {
            let store = self
                .store
                .lock()
                .map_err(|_| Error::Internal("registry lock poisoned".into()))?;
            let mut answers = Vec::with_capacity(req.ids.len());
            for id in &req.ids {
                if !self.issuer.names(id) {
                    return Ok(Reply::error(
                        OcspResponseStatus::Unauthorized,
                        "a certificate of another issuer",
                    ));
                }
                let state = so::cert_state(store.reader(), self.ca_id, &ocsp::serial_hex(id))?;
                answers.push((
                    id.clone(),
                    state.as_ref().map_or(Status::Unknown, status_of),
                ));
            }
            (answers, validity(store.reader(), self.ca_id, self.days)?)
        };
        let summary = answers
            .iter()
            .map(|(id, s)| format!("{} {}", ocsp::serial_hex(id), status_name(s)))
            .collect::<Vec<_>>()
            .join(", ");
        let max_age = req
            .nonce
            .is_none()
            .then(|| (when.next_update - when.produced_at).whole_seconds().max(0) as u64);
        let body = ocsp::sign(&self.signer, answers, when, req.nonce)?;
        Ok(Reply {
            body,
            max_age,
            summary,
        })
    }
}

fn status_name(s: &Status) -> &'static str {
    match s {
        Status::Good => "good",
        Status::Revoked { .. } => "revoked",
        Status::Unknown => "unknown",
    }
}

impl Answer for Live<'_> {
    fn answer(&self, request: &[u8]) -> Reply {
        match ocsp::parse_request(request) {
            Err(why) => Reply::error(OcspResponseStatus::MalformedRequest, &why),
            Ok(req) => self.try_answer(req).unwrap_or_else(|e| {
                Reply::error(OcspResponseStatus::InternalError, &e.to_string())
            }),
        }
    }
}

/// Pre-signed answers from a directory `cradle ca ocsp` wrote.
pub struct Presigned {
    pub dir: PathBuf,
    name_sha1: [u8; 20],
    key_sha1: [u8; 20],
}

impl Presigned {
    /// Opens the set in `dir` (its `index.json` names the issuer).
    pub fn open(dir: PathBuf) -> Result<Presigned> {
        let (name_sha1, key_sha1) = Index::read(&dir)?.hashes()?;
        Ok(Presigned {
            dir,
            name_sha1,
            key_sha1,
        })
    }
}

impl Answer for Presigned {
    fn answer(&self, request: &[u8]) -> Reply {
        let req = match ocsp::parse_request(request) {
            Err(why) => return Reply::error(OcspResponseStatus::MalformedRequest, &why),
            Ok(r) => r,
        };
        // RFC 5019 §2.1.1: one certificate per request; only SHA-1 CertIDs match the
        // stored responses, and a response cannot be signed here (§2.2.3: unauthorized).
        let [id] = req.ids.as_slice() else {
            return Reply::error(
                OcspResponseStatus::MalformedRequest,
                "a pre-signed responder answers one certificate per request",
            );
        };
        let sha1 = id.hash_algorithm.oid.to_string() == "1.3.14.3.2.26";
        if !sha1
            || id.issuer_name_hash.as_bytes() != self.name_sha1
            || id.issuer_key_hash.as_bytes() != self.key_sha1
        {
            return Reply::error(
                OcspResponseStatus::Unauthorized,
                "not a SHA-1 CertID of this issuer",
            );
        }
        let serial = ocsp::serial_hex(id);
        let path = response_path(&self.dir, &serial);
        match std::fs::read(&path) {
            Ok(body) => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let (max_age, summary) = match ocsp::summarise(&body) {
                    Ok(s) => (
                        s.next_update.map(|n| (n - now).max(0) as u64),
                        s.answers
                            .first()
                            .map(|(sn, st)| format!("{sn} {st} (pre-signed)"))
                            .unwrap_or_default(),
                    ),
                    Err(_) => (None, format!("{serial} (pre-signed, unreadable)")),
                };
                Reply {
                    body,
                    max_age,
                    summary,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reply::error(
                OcspResponseStatus::Unauthorized,
                &format!("no pre-signed response for {serial}"),
            ),
            Err(e) => Reply::error(
                OcspResponseStatus::InternalError,
                &format!("{}: {e}", path.display()),
            ),
        }
    }
}
