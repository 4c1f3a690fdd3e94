//! CA workflows: recording a created or imported CA, and unlocking the active one.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};
use crate::outfile::StagedFiles;
use crate::pki::ca::{CaKeys, CaMaterial, CHAIN, ISSUING_CERT, ISSUING_KEY, ROOT_CERT, ROOT_KEY};
use crate::pki::cert::{info_of, to_pem, CertInfo};
use crate::pki::signer::CaSigner;
use crate::pki::trust::{Anchor, TrustStore};
use crate::store::cas::{self, CaRecord, CaRole, NewCa};
use crate::store::{now_rfc3339, Reader, Store, Tx};

/// Writes the CA files under `dir` (never overwriting) into `staged` and records both
/// CAs in the registry.
fn install(
    dir: &Path,
    tx: &Tx<'_>,
    name: &str,
    material: &CaMaterial,
    now: &str,
    staged: &mut StagedFiles,
) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // What each CA row records as its key: a file under `dir`, or a token key's URI.
    let (issuing_key, root_key) = match &material.keys {
        CaKeys::Files { issuing, root } => {
            staged.write_new(&dir.join(ISSUING_KEY), issuing.as_bytes(), 0o600)?;
            if let Some(rk) = root {
                staged.write_new(&dir.join(ROOT_KEY), rk.as_bytes(), 0o600)?;
            }
            (
                ISSUING_KEY.to_string(),
                root.as_ref().map(|_| ROOT_KEY.to_string()),
            )
        }
        CaKeys::Token { issuing, root } => (issuing.clone(), root.clone()),
    };
    for (file, der) in [
        (ISSUING_CERT, &material.issuing_der),
        (ROOT_CERT, &material.root_der),
    ] {
        staged.write_new(
            &dir.join(file),
            to_pem("CERTIFICATE", der).as_bytes(),
            0o644,
        )?;
    }
    staged.write_new(&dir.join(CHAIN), material.chain_pem().as_bytes(), 0o644)?;

    let root = info_of(&material.root_der)?;
    let issuing = info_of(&material.issuing_der)?;
    let record = |role: CaRole, info: &CertInfo, der: &[u8], key: Option<&str>| {
        cas::insert_ca(
            tx,
            &NewCa {
                name,
                role,
                subject: &info.subject,
                fingerprint: &info.fingerprint,
                ski: info.ski.as_deref(),
                der,
                not_before: info.not_before,
                not_after: info.not_after,
                key_file: key,
            },
            now,
        )
    };
    record(CaRole::Root, &root, &material.root_der, root_key.as_deref())?;
    record(
        CaRole::Issuing,
        &issuing,
        &material.issuing_der,
        Some(&issuing_key),
    )?;
    Ok(())
}

/// One CA per home: a second `ca init` or `ca import` is refused.
pub fn refuse_existing(db: &Reader) -> Result<()> {
    if let Some(c) = cas::active_ca(db, CaRole::Issuing)? {
        return Err(Error::conflict(format!(
            "this home already has a CA ('{}'); refusing to replace it",
            c.subject
        )));
    }
    Ok(())
}

/// What `record` installed.
pub struct Installed {
    pub root: CertInfo,
    pub issuing: CertInfo,
}

/// Installs a created or imported CA: files under `dir` (keys encrypted, never
/// overwriting; a token's keys by URI), both CA rows and a `ca.created` / `ca.imported` event, in one
/// transaction; if anything fails, the files written are removed again.
pub fn record(
    store: &mut Store,
    dir: &Path,
    name: &str,
    material: &CaMaterial,
    kind: EventKind,
    actor: &Actor,
) -> Result<Installed> {
    let now = now_rfc3339();
    let tx = store.write()?;
    refuse_existing(&tx)?;
    let mut staged = StagedFiles::new();
    install(dir, &tx, name, material, &now, &mut staged)?;
    let issuing = info_of(&material.issuing_der)?;
    let root = info_of(&material.root_der)?;
    tx.event(
        kind,
        None,
        actor,
        serde_json::json!({
            "name": name,
            "root": root.fingerprint,
            "issuing": issuing.fingerprint,
        }),
        &now,
    )?;
    tx.commit()?;
    staged.keep();
    Ok(Installed { root, issuing })
}

/// The active issuing CA record, or a clear error telling the user to make one.
pub fn active_issuing(db: &Reader) -> Result<CaRecord> {
    cas::active_ca(db, CaRole::Issuing)?.ok_or_else(|| {
        Error::NotInitialised(
            "no CA yet: run `cradle ca init --name NAME` or `cradle ca import`".into(),
        )
    })
}

/// The active issuing CA, unlocked with `passphrase`.
pub fn unlock(db: &Reader, ca_dir: &Path, passphrase: &[u8]) -> Result<CaSigner> {
    crate::pki::ca::unlock(active_issuing(db)?, ca_dir, passphrase)
}

/// Every CA the registry knows (active or not), parsed once.
pub fn trust_store(db: &Reader) -> Result<TrustStore> {
    Ok(TrustStore::new(cas::all_cas(db)?.into_iter().map(|c| {
        Anchor {
            id: c.id,
            name: c.name,
            der: c.der,
        }
    })))
}
