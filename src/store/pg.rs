//! A registry on a PostgreSQL server (issue 14, first slice): connect, create, check
//! and migrate the schema, append to the event chain, read it back. What runs here:
//! `init`, `log head`, `log verify`, `log export`, `status`; every other command refuses a
//! PostgreSQL registry (see `cli::common::Ctx::registry`).
//!
//! Concurrency: migrations run in one transaction under
//! `pg_advisory_xact_lock(MIGRATION_LOCK)` and re-read the version under it, so two
//! stations starting at once migrate once. Event appends take
//! `pg_advisory_xact_lock(CHAIN_LOCK)` before reading the head, so N stations append
//! one line. Readers take one `REPEATABLE READ` snapshot.
//!
//! The log key stays out of the database: HOME/log.key of the station, as beside a
//! SQLite file (every station writing the registry needs a copy of it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::db::Db;
use super::error::StoreError;
use super::events::{self, ChainReport, ChainWalk, StoredEvent, GENESIS, HEAD_KEY};
use super::logkey::LogKey;
use super::pgurl::PgTarget;
use super::schema::APPLICATION_ID;
use super::schema_pg::{self, BOOTSTRAP, CHAIN_LOCK, MIGRATIONS, MIGRATION_LOCK};
use crate::error::{Error, Result};
use crate::model::{Actor, EventKind};

pub struct PgStore {
    db: Db,
    target: PgTarget,
    key_path: PathBuf,
}

impl PgStore {
    fn connect(target: &PgTarget, timeout: Duration, key_path: &Path) -> Result<PgStore> {
        let client = target.connect(timeout)?;
        Ok(PgStore {
            db: Db::pg(client),
            target: target.clone(),
            key_path: key_path.to_path_buf(),
        })
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// Makes the schema in an empty database; refuses one that holds any table.
    pub fn create(target: &PgTarget, timeout: Duration, key_path: &Path) -> Result<PgStore> {
        let mut s = PgStore::connect(target, timeout, key_path)?;
        s.db.batch("BEGIN")?;
        let r = s.create_locked();
        s.end(r)?;
        Ok(s)
    }

    /// `create` with the registry's first event in the same transaction: a failure
    /// leaves the database empty.
    pub fn create_with_event(
        target: &PgTarget,
        timeout: Duration,
        key_path: &Path,
        (kind, actor, details, at): (EventKind, &Actor, serde_json::Value, &str),
    ) -> Result<PgStore> {
        let mut s = PgStore::connect(target, timeout, key_path)?;
        s.db.batch("BEGIN")?;
        let r = s.create_locked().and_then(|_| {
            s.append_locked(kind.as_str(), None, actor, &details.to_string(), at)
                .map(|_| ())
        });
        s.end(r)?;
        Ok(s)
    }

    fn create_locked(&mut self) -> Result<()> {
        self.db
            .execute("SELECT pg_advisory_xact_lock(?1)", &[MIGRATION_LOCK.into()])?;
        if user_tables(&mut self.db)? > 0 {
            let ours = self.has_schema_table()?;
            return Err(Error::conflict(format!(
                "registry {}: {}; refusing to initialise it",
                self.target.url,
                if ours {
                    "already holds a cradle registry (a second station joins it with `cradle init --join --log-key FILE`)"
                } else {
                    "the database holds other tables (give cradle a database of its own)"
                }
            )));
        }
        make_schema(&mut self.db)
    }

    /// Opens an existing registry for a second station's home (`init --join`): the
    /// database must hold a cradle registry with events, and the log key at
    /// `key_path` (the first station's, copied by the operator) must verify every
    /// keyed event of its chain. Returns the chain's report.
    pub fn join(target: &PgTarget, timeout: Duration, key_path: &Path) -> Result<ChainReport> {
        let mut s = PgStore::connect(target, timeout, key_path)?;
        if !s.has_schema_table()? {
            return Err(Error::Store(StoreError::NotInitialised(format!(
                "registry {}: holds no cradle registry to join (the first station runs `cradle init --registry URL` without --join)",
                target.url
            ))));
        }
        let mut s = PgStore::open(target, timeout, key_path)?;
        let key = LogKey::read(key_path)?
            .ok_or_else(|| Error::input(format!("log key {}: no such file", key_path.display())))?;
        let report = s.verify_chain()?;
        if report.events == 0 {
            return Err(Error::Store(StoreError::NotInitialised(format!(
                "registry {}: has no events to join (the first station runs `cradle init --registry URL` without --join)",
                target.url
            ))));
        }
        if let Some(b) = &report.first_break {
            // A key that is not the registry's fails at the chain's first keyed event;
            // a break further on is a damaged chain, whatever the key.
            if !(b.event_id == key.from.max(1) && b.problem == "altered") {
                return Err(Error::Store(StoreError::corrupt(
                    &target.url,
                    format!(
                        "its event chain is broken at event {} ({}); refusing to join it (cradle log verify)",
                        b.event_id, b.problem
                    ),
                )));
            }
            let msg = {
                format!(
                    "log key {} does not verify the registry's chain (event {} does not match it): copy the log.key of the station that initialised {}",
                    key_path.display(),
                    b.event_id,
                    target.url
                )
            };
            return Err(Error::crypto(msg));
        }
        Ok(report)
    }
    /// Opens an existing registry: checks it is cradle's, refuses a newer schema,
    /// migrates an older one.
    pub fn open(target: &PgTarget, timeout: Duration, key_path: &Path) -> Result<PgStore> {
        let mut s = PgStore::connect(target, timeout, key_path)?;
        let current = s.checked_version()?;
        if current < MIGRATIONS.len() {
            s.db.batch("BEGIN")?;
            let r = s.migrate_locked();
            s.end(r)?;
        }
        Ok(s)
    }

    fn has_schema_table(&mut self) -> Result<bool> {
        Ok(self
            .db
            .query_row("SELECT to_regclass('cradle_schema') IS NOT NULL", &[])?
            .map(|r| r.i64(0))
            .transpose()?
            == Some(1))
    }

    /// The schema version, after checking the database is a cradle registry this
    /// binary understands.
    fn checked_version(&mut self) -> Result<usize> {
        let url = self.target.url.clone();
        let corrupt = |msg: String| Error::Store(StoreError::corrupt(&url, msg));
        if !self.has_schema_table()? {
            return Err(Error::Store(StoreError::NotInitialised(format!(
                "registry {url} holds no cradle registry (no cradle_schema table): run `cradle init --registry {url}` first"
            ))));
        }
        let row = self
            .db
            .query_row(
                "SELECT application_id, version FROM cradle_schema WHERE id = 1",
                &[],
            )?
            .ok_or_else(|| corrupt("cradle_schema has no row".into()))?;
        if row.i64(0)? != APPLICATION_ID {
            return Err(corrupt(
                "not a cradle registry (foreign application id)".into(),
            ));
        }
        let version = row.i64(1)?;
        let known = MIGRATIONS.len();
        if version < 0 || version as usize > known {
            return Err(corrupt(format!(
                "schema version {version} is newer than this cradle understands ({known}); upgrade cradle"
            )));
        }
        Ok(version as usize)
    }

    fn migrate_locked(&mut self) -> Result<()> {
        self.db
            .execute("SELECT pg_advisory_xact_lock(?1)", &[MIGRATION_LOCK.into()])?;
        // Read again under the lock: another station may have migrated meanwhile.
        let current = self.checked_version()?;
        self.apply_from(current)
    }

    fn apply_from(&mut self, current: usize) -> Result<()> {
        for sql in &MIGRATIONS[current..] {
            self.db.batch(sql)?;
        }
        self.db.execute(
            "UPDATE cradle_schema SET version = ?1 WHERE id = 1",
            &[(MIGRATIONS.len() as i64).into()],
        )?;
        Ok(())
    }

    /// Commits after `r` succeeded, else rolls back and returns its error.
    fn end(&mut self, r: Result<()>) -> Result<()> {
        match r {
            Ok(()) => self.db.batch("COMMIT"),
            Err(e) => {
                let _ = self.db.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub fn schema_version(&mut self) -> Result<usize> {
        self.checked_version()
    }

    /// Appends one event in its own transaction, serialised with every other station
    /// by the chain lock; returns its id.
    pub fn event(
        &mut self,
        kind: EventKind,
        device_id: Option<i64>,
        actor: &Actor,
        details: serde_json::Value,
        at: &str,
    ) -> Result<i64> {
        self.db.batch("BEGIN")?;
        let mut id = 0;
        let r = self
            .append_locked(kind.as_str(), device_id, actor, &details.to_string(), at)
            .map(|i| id = i);
        self.end(r)?;
        Ok(id)
    }

    fn append_locked(
        &mut self,
        kind: &str,
        device_id: Option<i64>,
        actor: &Actor,
        details: &str,
        at: &str,
    ) -> Result<i64> {
        self.db
            .execute("SELECT pg_advisory_xact_lock(?1)", &[CHAIN_LOCK.into()])?;
        let last = self
            .db
            .query_row("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1", &[])?;
        let (last_id, prev) = match last {
            Some(r) => (r.i64(0)?, r.text(1)?),
            None => (0, GENESIS.to_string()),
        };
        let key = match LogKey::read(&self.key_path)? {
            Some(k) => k,
            None if last_id == 0 => LogKey::create_at(&self.key_path, 1)?,
            None => {
                return Err(Error::Store(StoreError::Unsupported(format!(
                    "registry {} has events but this home has no log key {}: copy the log key of the station that initialised it",
                    self.target.url,
                    self.key_path.display()
                ))))
            }
        };
        let id = last_id + 1;
        let hash = events::event_hash(
            key.for_id(id),
            &events::Hashed {
                id,
                prev_hash: prev.as_bytes(),
                device_id,
                kind,
                actor: &actor.operator,
                station: &actor.station,
                at,
                details,
            },
        );
        self.db.execute(
            "INSERT INTO events (id, device_id, kind, actor, station, at, details, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &[
                id.into(),
                device_id.into(),
                kind.into(),
                actor.operator.as_str().into(),
                actor.station.as_str().into(),
                at.into(),
                details.into(),
                prev.into(),
                hash.as_str().into(),
            ],
        )?;
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[HEAD_KEY.into(), format!("{id}:{hash}").into()],
        )?;
        Ok(id)
    }

    /// Runs `f` inside one read-only REPEATABLE READ snapshot.
    fn snapshot<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        self.db
            .batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let r = f(self);
        let _ = self.db.batch("ROLLBACK");
        r
    }

    /// The whole chain checked in one snapshot (as `events::verify_chain`).
    pub fn verify_chain(&mut self) -> Result<ChainReport> {
        let key = LogKey::read(&self.key_path)?;
        let missing = key.is_none();
        self.snapshot(|s| {
            let mut walk = ChainWalk::new(key, missing);
            // In pages, so a long log is never one result set in memory.
            let mut after = 0i64;
            loop {
                let rows = s.db.query(
                    "SELECT id, device_id, kind, actor, station, at, details, prev_hash, hash
                     FROM events WHERE id > ?1 ORDER BY id LIMIT 10000",
                    &[after.into()],
                )?;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    after = r.i64(0)?;
                    walk.step(StoredEvent {
                        id: after,
                        device_id: r.opt_i64(1)?,
                        kind: r.text(2)?,
                        actor: r.text(3)?,
                        station: r.text(4)?,
                        at: r.text(5)?,
                        details: r.text(6)?,
                        prev: r.text(7)?,
                        hash: r.text(8)?,
                    });
                }
            }
            let recorded = if walk.broken() {
                None
            } else {
                s.db.query_row("SELECT value FROM meta WHERE key = ?1", &[HEAD_KEY.into()])?
                    .map(|r| r.text(0))
                    .transpose()?
                    .map(|v| events::parse_head(&v))
                    .transpose()?
            };
            Ok(walk.finish(recorded))
        })
    }

    /// The newest event (as `events::log_head`).
    pub fn log_head(&mut self) -> Result<Option<events::LogHead>> {
        let key = LogKey::read(&self.key_path)?;
        let row = self.db.query_row(
            "SELECT id, hash, at FROM events ORDER BY id DESC LIMIT 1",
            &[],
        )?;
        row.map(|r| {
            let id = r.i64(0)?;
            Ok(events::LogHead {
                keyed: key.as_ref().is_some_and(|k| k.for_id(id).is_some()),
                id,
                hash: r.text(1)?,
                at: r.text(2)?,
            })
        })
        .transpose()
    }

    /// The fleet by state, site and batch, in one snapshot (`status`).
    pub fn fleet_summary(&mut self) -> Result<super::inventory::FleetSummary> {
        self.snapshot(|s| super::inventory::fleet_summary_on(&mut s.db))
    }

    /// Events in id order, as `audit::events_export`: at or after `since`, of one
    /// device (which must exist), read in pages inside one snapshot.
    pub fn events_export(
        &mut self,
        since: Option<&str>,
        device: Option<&str>,
        f: &mut dyn FnMut(super::audit::ExportedEvent) -> Result<()>,
    ) -> Result<()> {
        self.snapshot(|s| {
            if let Some(d) = device {
                let found = s
                    .db
                    .query_row("SELECT 1 FROM devices WHERE serial = ?1", &[d.into()])?;
                if found.is_none() {
                    return Err(Error::not_found(format!(
                        "no device with serial '{d}' in the registry"
                    )));
                }
            }
            let mut after = 0i64;
            loop {
                let rows = s.db.query(
                    "SELECT e.id, e.at, e.kind, d.serial, e.actor, e.station, e.details, e.prev_hash, e.hash
                     FROM events e LEFT JOIN devices d ON d.id = e.device_id
                     WHERE e.id > ?1 AND (CAST(?2 AS TEXT) IS NULL OR e.at >= CAST(?2 AS TEXT))
                       AND (CAST(?3 AS TEXT) IS NULL OR d.serial = CAST(?3 AS TEXT))
                     ORDER BY e.id LIMIT 5000",
                    &[after.into(), since.into(), device.into()],
                )?;
                if rows.is_empty() {
                    return Ok(());
                }
                for r in rows {
                    after = r.i64(0)?;
                    let details = r.text(6)?;
                    f(super::audit::ExportedEvent {
                        id: after,
                        at: r.text(1)?,
                        kind: r.text(2)?,
                        device: r.opt_text(3)?,
                        actor: r.text(4)?,
                        station: r.text(5)?,
                        details: serde_json::from_str(&details)
                            .unwrap_or(serde_json::Value::String(details)),
                        prev_hash: r.text(7)?,
                        hash: r.text(8)?,
                    })?;
                }
            }
        })
    }

    /// The connection, for a `Store` over this registry.
    pub fn into_db(self) -> Db {
        self.db
    }

    /// Direct access for the store's own tests and the next ported commands.
    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }
}

/// How many tables (other than temporary ones) the connected database's schema holds.
pub(super) fn user_tables(db: &mut Db) -> Result<i64> {
    Ok(db
        .query_row(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()",
            &[],
        )?
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0))
}

/// Makes the whole schema in an empty database, inside the caller's transaction (under
/// the migration lock when stations may race): `cradle_schema`, every migration, and the
/// record that device rows are marked from the start.
pub(super) fn make_schema(db: &mut Db) -> Result<()> {
    db.batch(BOOTSTRAP)?;
    db.execute(
        "INSERT INTO cradle_schema (id, application_id, version) VALUES (1, ?1, 0)",
        &[APPLICATION_ID.into()],
    )?;
    for sql in MIGRATIONS {
        db.batch(sql)?;
    }
    db.execute(
        "UPDATE cradle_schema SET version = ?1 WHERE id = 1",
        &[(MIGRATIONS.len() as i64).into()],
    )?;
    // Every device row of this registry is marked from the start (`rowmark`).
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        &[super::rowmark::META_KEY.into(), super::now_rfc3339().into()],
    )?;
    Ok(())
}

/// The version every PostgreSQL registry this binary writes has.
pub fn known_version() -> usize {
    schema_pg::MIGRATIONS.len()
}
