//! The registry store: the only module that names rusqlite (and, for the PostgreSQL
//! registry of issue 14, `postgres`: `db`, `pg`, `pgurl`). One `Store` owns the
//! connection, applies migrations and hands out units of work (`Tx`); read-only
//! queries take a `Reader`, which `&Store` and `&Tx` both dereference to. Errors
//! leave as the project's own `StoreError`, never as `rusqlite::Error`.

pub mod assets;
pub mod audit;
pub mod bulk;
pub mod cas;
pub mod certs;
pub mod conn;
pub mod contact;
pub mod copy;
pub mod db;
pub mod devices;
pub mod error;
pub mod events;
pub mod inventory;
pub mod logkey;
pub mod ocsp;
pub mod pg;
pub mod pg_import;
pub mod pgurl;
pub mod provision;
pub mod renewals;
pub mod retire;
pub mod rowmark;
pub mod schema;
pub mod schema_pg;
mod tx;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use conn::{Begin, Conn};

pub use cas::{CaRecord, CaRole, NewCa};
pub use certs::{CertRecord, CertStatus, KeySource, NewCert};
pub use devices::{Device, DeviceStatus, NewDevice};

pub use error::StoreError;
use error::{file_err, is_busy};
pub use events::Event;
pub use tx::{Reader, Snapshot, Tx};

use crate::error::{Error, Result};
use std::ops::Deref;

/// Page size of new registries, in bytes. CPU seconds of a 1M-row import: 4 KiB 8.9,
/// 8 KiB 8.3, 16 KiB 7.7; after the status CHECK fix, 16 KiB 6.1, 32 KiB 5.7, 64 KiB
/// 5.5. Not 64: every small transaction (one device, one certificate) writes whole
/// pages to the WAL.
pub const PAGE_SIZE: i64 = 32768;

/// Process-wide SQLite settings, applied once before the first connection: memory
/// statistics off, so that every allocation does not take SQLite's global mutex.
fn init_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is called before any connection of this process is
        // opened through the registry; if SQLite was already initialised (another
        // connection came first) it returns SQLITE_MISUSE and changes nothing.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
        }
    });
}

/// How long a writer waits for another station's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest registry the first write of a process quick-checks (about 0.2 s per 80 MB
/// measured here, so at most ~1.5 s).
pub const QUICK_CHECK_MAX_BYTES: u64 = 512 << 20;

/// Where a registry is, to open another connection to it (a worker thread's own).
#[derive(Clone, Debug)]
pub enum Location {
    File(PathBuf),
    Pg {
        target: Box<pgurl::PgTarget>,
        timeout: Duration,
        key_file: PathBuf,
    },
}

impl Location {
    pub fn open(&self) -> Result<Store> {
        match self {
            Location::File(p) => Store::open(p),
            Location::Pg {
                target,
                timeout,
                key_file,
            } => Store::open_pg(target, *timeout, key_file),
        }
    }

    /// The file, or the URL (as `Store::path`).
    pub fn path(&self) -> PathBuf {
        match self {
            Location::File(p) => p.clone(),
            Location::Pg { target, .. } => PathBuf::from(&target.url),
        }
    }
}

pub struct Store {
    conn: Conn,
    /// Set for a PostgreSQL registry (`location`).
    pg_location: Option<Location>,
    path: PathBuf,
    /// `begin_bulk` left WAL mode; `end_bulk` goes back.
    bulk: bool,
    /// The file passed its quick check before this process's first write.
    write_checked: bool,
    /// Device marks (see `rowmark`): the key, loaded at the first write transaction and
    /// shared with this connection's mark function; whether the function and TEMP
    /// triggers are installed; whether the backfill question is settled.
    row_key: std::sync::Arc<std::sync::OnceLock<rowmark::RowKey>>,
    marks_installed: bool,
    marks_settled: bool,
}

/// How `Store::open_for_reading` could open the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess {
    /// Opened as any writer would (the file is writable).
    Normal,
    /// The file cannot be written: SQLite `mode=ro`; other stations' commits are seen.
    ReadOnly,
    /// Not even the WAL index can be created (read-only directory or file system, no
    /// `-wal` file): SQLite `immutable=1`, which assumes nobody changes the file.
    Immutable,
}

/// Whether this process may write `path` (the OS answers: read-only mounts and
/// permission bits for the real user, root included on a read-only file system).
fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// `path` as a SQLite URI filename with `query`: characters SQLite's URI parser would
/// read as syntax are percent-encoded.
fn sqlite_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
}

impl Store {
    /// Creates a new registry file; fails if one exists.
    pub fn create(path: &Path) -> Result<Store> {
        if path.exists() {
            return Err(Error::conflict(format!(
                "registry {} already exists",
                path.display()
            )));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        init_sqlite();
        let conn = Connection::open_with_flags(path, flags).map_err(|e| file_err(path, e))?;
        // The page size is fixed once the first table exists (and WAL mode pins it), so
        // it is set before anything else. Bigger pages mean fewer b-tree splits and
        // cell moves per row on bulk imports (measured with benches/inventory.rs).
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(|e| file_err(path, e))?;
        let mut reg = Store {
            conn: Conn::Lite(conn),
            pg_location: None,
            path: path.to_path_buf(),
            bulk: false,
            write_checked: false,
            row_key: Default::default(),
            marks_installed: false,
            marks_settled: false,
        };
        reg.configure()?;
        reg.sq()
            .pragma_update(None, "application_id", schema::APPLICATION_ID)
            .map_err(|e| file_err(path, e))?;
        reg.migrate()?;
        // Nothing to backfill: every row this registry ever holds is marked.
        rowmark::record_new(&reg.conn)?;
        Ok(reg)
    }

    /// Opens an existing registry, migrating it forward if the binary is newer.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::Store(StoreError::NotInitialised(format!(
                "no registry at {}: run `cradle init` first",
                path.display()
            ))));
        }
        // SQLite would silently open a read-only file read-only and fail at the first
        // write half-way through a workflow; say so up front, naming the file. A
        // registry whose WAL index cannot be created fails the same way.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let shm = Store::sibling(path, "-shm");
        if !writable(path)
            || (dir.is_some_and(|d| !writable(d)) && !(shm.exists() && writable(&shm)))
        {
            return Err(Error::Store(StoreError::ReadOnly(path.to_path_buf())));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        init_sqlite();
        let conn = Connection::open_with_flags(path, flags).map_err(|e| file_err(path, e))?;
        let mut reg = Store {
            conn: Conn::Lite(conn),
            pg_location: None,
            path: path.to_path_buf(),
            bulk: false,
            write_checked: false,
            row_key: Default::default(),
            marks_installed: false,
            marks_settled: false,
        };
        reg.configure()?;
        reg.check_identity()?;
        reg.migrate()?;
        Ok(reg)
    }

    /// Opens the PostgreSQL registry at `target` (schema checked, migrated when older);
    /// the log key is the station's `key_file`, never in the database.
    pub fn open_pg(target: &pgurl::PgTarget, timeout: Duration, key_file: &Path) -> Result<Store> {
        let pg = pg::PgStore::open(target, timeout, key_file)?;
        Ok(Store {
            conn: Conn::pg(pg.into_db(), key_file.to_path_buf()),
            pg_location: Some(Location::Pg {
                target: Box::new(target.clone()),
                timeout,
                key_file: key_file.to_path_buf(),
            }),
            path: PathBuf::from(&target.url),
            bulk: false,
            // The server checks its own pages; SQLite's quick check has no twin here.
            write_checked: true,
            row_key: Default::default(),
            marks_installed: false,
            marks_settled: false,
        })
    }

    /// Whether this registry is on a PostgreSQL server.
    pub fn is_pg(&self) -> bool {
        self.conn.is_pg()
    }

    /// The log key file of this registry (beside the SQLite file, or the station's).
    pub fn key_file(&self) -> Option<PathBuf> {
        self.conn.key_file()
    }

    /// Where this registry is (to open it again from another thread).
    pub fn location(&self) -> Location {
        self.pg_location
            .clone()
            .unwrap_or_else(|| Location::File(self.path.clone()))
    }

    /// Opens an existing registry for a command that only reads: as `open` when the
    /// file is writable, else read-only (`mode=ro`), else, when the WAL index cannot
    /// be created and no WAL is waiting, `immutable=1`. Never migrates a read-only file.
    pub fn open_for_reading(path: &Path) -> Result<(Store, ReadAccess)> {
        if !path.exists() || writable(path) {
            return Ok((Store::open(path)?, ReadAccess::Normal));
        }
        match Store::open_with_uri(path, "mode=ro") {
            Ok(s) => Ok((s, ReadAccess::ReadOnly)),
            // Read-only WAL access needs the -shm file; with neither it nor a WAL
            // there is nothing newer than the file, so reading it as immutable is exact.
            Err(e) if !Store::sibling(path, "-wal").exists() => {
                match Store::open_with_uri(path, "immutable=1") {
                    Ok(s) => Ok((s, ReadAccess::Immutable)),
                    Err(_) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn open_with_uri(path: &Path, query: &str) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        init_sqlite();
        let conn = Connection::open_with_flags(sqlite_uri(path, query), flags)
            .map_err(|e| file_err(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| file_err(path, e))?;
        let reg = Store {
            conn: Conn::Lite(conn),
            pg_location: None,
            path: path.to_path_buf(),
            bulk: false,
            write_checked: false,
            row_key: Default::default(),
            marks_installed: false,
            marks_settled: false,
        };
        reg.check_identity()?;
        let version = reg.schema_version().map_err(|_| {
            Error::Store(StoreError::corrupt(path, "cannot read the schema version"))
        })?;
        if version != schema::MIGRATIONS.len() {
            return Err(Error::Store(StoreError::corrupt(
                path,
                format!(
                    "read-only registry has schema version {version}, this cradle needs {}: open it once where it is writable",
                    schema::MIGRATIONS.len()
                ),
            )));
        }
        Ok(reg)
    }

    fn sibling(path: &Path, suffix: &str) -> PathBuf {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// An in-memory registry (unit tests).
    pub fn in_memory() -> Result<Store> {
        init_sqlite();
        let conn = Connection::open_in_memory()?;
        let mut reg = Store {
            conn: Conn::Lite(conn),
            pg_location: None,
            path: PathBuf::from(":memory:"),
            bulk: false,
            write_checked: false,
            row_key: Default::default(),
            marks_installed: false,
            marks_settled: false,
        };
        reg.configure()?;
        reg.migrate()?;
        Ok(reg)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The registry file and its WAL and shared-memory files: what an output file
    /// must never replace.
    pub fn files(&self) -> [PathBuf; 3] {
        let with = |suffix: &str| Store::sibling(&self.path, suffix);
        [self.path.clone(), with("-wal"), with("-shm")]
    }

    /// How many WAL pages may accumulate before an automatic checkpoint (bulk
    /// inserts checkpoint less often; SQLite's default is 1000).
    pub fn set_autocheckpoint(&self, pages: u32) -> Result<()> {
        let Some(c) = self.conn.lite() else {
            return Ok(());
        };
        c.pragma_update(None, "wal_autocheckpoint", pages)?;
        Ok(())
    }

    /// Read-only queries (the same as dereferencing the store).
    pub fn reader(&self) -> &Reader {
        self
    }

    /// Settings for bulk work on this connection: map the file instead of reading it
    /// page by page, keep more of it cached, and checkpoint the WAL less often.
    pub fn tune_for_bulk(&self) -> Result<()> {
        let Some(c) = self.conn.lite() else {
            return Ok(());
        };
        let _: i64 = c.query_row("PRAGMA mmap_size = 1073741824", [], |r| r.get(0))?;
        c.pragma_update(None, "cache_size", -262_144)?;
        c.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(())
    }

    fn configure(&mut self) -> Result<()> {
        let path = self.path.clone();
        let c = self.sq();
        c.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| file_err(&path, e))?;
        // journal_mode is the first statement that reads the file, so a file that is
        // not SQLite at all fails here with "file is not a database". Another process
        // may have the registry out of WAL mode for a bulk import (`begin_bulk`); the
        // switch back needs it to finish, so keep trying for the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            // While the bulk writer holds its lock the switch fails at once with
            // SQLITE_BUSY (SQLite does not wait where waiting could deadlock).
            let err = match c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(mode) if path.as_os_str() == ":memory:" || mode.eq_ignore_ascii_case("wal") => {
                    break
                }
                Ok(mode) => Error::Store(StoreError::corrupt(
                    &path,
                    format!("cannot switch to WAL mode (got {mode})"),
                )),
                Err(e) if is_busy(&e) => Error::Store(StoreError::Busy),
                Err(e) => return Err(file_err(&path, e)),
            };
            if std::time::Instant::now() >= deadline {
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c.pragma_update(None, "foreign_keys", true)
            .and_then(|_| c.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| c.pragma_update(None, "cache_size", -65536))
            .map_err(|e| file_err(&path, e))?;
        Ok(())
    }

    /// A file that is SQLite but not ours (another application's database) is refused.
    fn check_identity(&self) -> Result<()> {
        let app: i64 = self
            .sq()
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(|e| file_err(&self.path, e))?;
        if app != schema::APPLICATION_ID {
            return Err(Error::Store(StoreError::corrupt(
                &self.path,
                "not a cradle registry (foreign SQLite database)",
            )));
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<usize> {
        if self.conn.is_pg() {
            let v: i64 =
                self.conn
                    .query_row("SELECT version FROM cradle_schema WHERE id = 1", [], |r| {
                        r.get(0)
                    })?;
            return Ok(v as usize);
        }
        let v: i64 = self
            .sq()
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(v as usize)
    }

    /// Applies pending migrations in one exclusive transaction.
    fn migrate(&mut self) -> Result<()> {
        let current: i64 = self
            .sq()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| file_err(&self.path, e))?;
        let current = current as usize;
        let known = schema::MIGRATIONS.len();
        if current > known {
            return Err(Error::Store(StoreError::corrupt(
                &self.path,
                format!(
                    "schema version {current} is newer than this cradle understands ({known}); upgrade cradle"
                ),
            )));
        }
        if current == known {
            return Ok(());
        }
        let tx = rusqlite::Transaction::new_unchecked(
            self.sq(),
            rusqlite::TransactionBehavior::Exclusive,
        )?;
        // Read again under the lock: another station may have migrated while this one
        // waited for it, and its migrations must not run twice.
        let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let current = current as usize;
        if current >= known {
            return Ok(());
        }
        for sql in &schema::MIGRATIONS[current..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "user_version", known as i64)?;
        tx.commit()?;
        Ok(())
    }

    /// A write transaction that takes the write lock up front, so two stations
    /// serialise instead of failing half-way. Rolls back on drop unless committed.
    pub fn write(&mut self) -> Result<Tx<'_>> {
        self.check_before_first_write()?;
        self.install_marks()?;
        // `write_trusted` may have turned the checks off for its transaction.
        if let Some(c) = self.conn.lite() {
            c.pragma_update(None, "foreign_keys", true)?;
        }
        let mut tx = Tx::new(&self.conn, Begin::Write)?;
        prepare_marks(
            &mut tx,
            self.marks_installed,
            &self.row_key,
            &mut self.marks_settled,
        )?;
        Ok(tx)
    }

    /// Does now the one-time work of the first write transaction (the quick check of
    /// the file, the device-mark triggers), so that a caller can do it while it waits
    /// on something else (a device on a serial line).
    pub fn ready_to_write(&mut self) -> Result<()> {
        self.check_before_first_write()?;
        self.install_marks()
    }

    /// Registers the device-mark function and TEMP triggers on this connection before
    /// its first write transaction (not for an in-memory registry, which has no key).
    fn install_marks(&mut self) -> Result<()> {
        if self.path.as_os_str() == ":memory:" {
            return Ok(());
        }
        // A bulk writer suspends the INSERT trigger for its transaction; put it back if
        // that transaction committed without it (one query on the TEMP schema).
        let Some(c) = self.conn.lite() else {
            // PostgreSQL: marks are computed at commit (`rowmark::mark_touched`) from
            // what this session's TEMP tables noted.
            if !self.marks_installed {
                self.conn.execute_batch(rowmark::PG_TOUCHED_TABLES)?;
                self.marks_installed = true;
            }
            return Ok(());
        };
        if self.marks_installed && rowmark::installed(c)? {
            return Ok(());
        }
        rowmark::install(c, self.row_key.clone())?;
        self.marks_installed = true;
        Ok(())
    }

    /// One consistent read of the registry (see `Snapshot`).
    pub fn snapshot(&self) -> Result<Snapshot<'_>> {
        Snapshot::new(&self.conn)
    }
}

impl Store {
    /// The SQLite connection of a SQLite registry (what only SQLite has: pragmas,
    /// migrations by `user_version`); the PostgreSQL registry never reaches these.
    fn sq(&self) -> &Connection {
        self.conn
            .lite()
            .expect("a SQLite-only operation on a PostgreSQL registry")
    }
}

impl Deref for Store {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        Reader::of(&self.conn)
    }
}

impl Store {
    /// Like `write`, but without foreign-key checks for this transaction: for bulk
    /// writers (inventory import) whose rows only reference devices they just
    /// inserted or looked up in the same transaction, where the per-row parent lookup
    /// is pure cost. The next `write` turns the checks back on; so does
    /// `restore_checks`.
    pub fn write_trusted(&mut self) -> Result<Tx<'_>> {
        self.check_before_first_write()?;
        self.install_marks()?;
        // The pragma is a no-op inside a transaction, so it goes before BEGIN.
        if let Some(c) = self.conn.lite() {
            c.pragma_update(None, "foreign_keys", false)?;
        }
        let mut tx = Tx::new(&self.conn, Begin::Write)?;
        prepare_marks(
            &mut tx,
            self.marks_installed,
            &self.row_key,
            &mut self.marks_settled,
        )?;
        Ok(tx)
    }

    /// For one write transaction that adds far more pages than the page cache holds (a
    /// large import): leaves WAL mode, if no other connection has the registry open,
    /// until `end_bulk`. In WAL mode every page is written twice, to the WAL and then
    /// by the checkpoint into the file; with a rollback journal the pages past the old
    /// end of the file go straight into it and need no journal entry (1M-row import:
    /// about 0.9 s less). The price: from the first spilled page until the commit,
    /// other processes cannot read the registry and wait (up to the busy timeout).
    /// A crash leaves a hot journal that the next opener rolls back, as in any
    /// rollback-journal transaction. Returns whether the mode changed.
    pub fn begin_bulk(&mut self) -> Result<bool> {
        if self.bulk || self.path.as_os_str() == ":memory:" || self.conn.is_pg() {
            return Ok(self.bulk);
        }
        // Fails (busy) while any other connection has the file open in WAL mode; that
        // is an answer, not something to wait for.
        let c = self.sq();
        c.busy_timeout(Duration::ZERO)?;
        let switched = c.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get::<_, String>(0));
        c.busy_timeout(BUSY_TIMEOUT)?;
        let mode = match switched {
            Ok(m) => m,
            Err(e) if is_busy(&e) => return Ok(false),
            Err(e) => return Err(file_err(&self.path, e)),
        };
        if !mode.eq_ignore_ascii_case("delete") {
            return Ok(false);
        }
        self.bulk = true;
        // NORMAL is only safe against power loss in WAL mode.
        self.sq().pragma_update(None, "synchronous", "FULL")?;
        Ok(true)
    }

    /// Back to WAL mode after a `begin_bulk` transaction committed or rolled back.
    pub fn end_bulk(&mut self) -> Result<()> {
        if !self.bulk {
            return Ok(());
        }
        self.configure()?;
        self.bulk = false;
        Ok(())
    }

    /// Writing into a damaged file spreads the damage (a dropped index entry let an
    /// import create a second device with the same serial): the first write of each
    /// process runs SQLite's quick check and refuses a file that fails it. Files over
    /// `QUICK_CHECK_MAX_BYTES` are left to `cradle audit`'s full check, which a
    /// nightly audit runs, so that a one-row `device set` stays fast on a huge fleet.
    fn check_before_first_write(&mut self) -> Result<()> {
        // Once per file and process, not per connection: a station opens one per port
        // thread (and `--watch` one per device), and the check reads the whole file.
        static CHECKED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
        if self.write_checked || self.path.as_os_str() == ":memory:" {
            return Ok(());
        }
        if CHECKED
            .lock()
            .map(|c| c.contains(&self.path))
            .unwrap_or(false)
        {
            self.write_checked = true;
            return Ok(());
        }
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size <= QUICK_CHECK_MAX_BYTES {
            let problems = self.reader().integrity_problems(false, 3)?;
            if let Some(first) = problems.first() {
                return Err(Error::Store(StoreError::corrupt(
                    &self.path,
                    format!(
                        "fails SQLite's quick check ({first}); refusing to write into a damaged registry: restore it from a backup (`cradle audit` lists what it finds)"
                    ),
                )));
            }
        }
        self.write_checked = true;
        if let Ok(mut c) = CHECKED.lock() {
            c.push(self.path.clone());
        }
        Ok(())
    }

    /// Turns foreign-key checks back on after a `write_trusted` transaction ended.
    pub fn restore_checks(&mut self) -> Result<()> {
        if let Some(c) = self.conn.lite() {
            c.pragma_update(None, "foreign_keys", true)?;
        }
        Ok(())
    }
}

/// At the start of a write transaction (the write lock held): loads the device-mark
/// key (creating the log key if the registry has none yet, as the first event would),
/// hands it to the transaction for bulk writers, and backfills the marks of a registry
/// from before them.
fn prepare_marks(
    tx: &mut Tx<'_>,
    installed: bool,
    slot: &std::sync::OnceLock<rowmark::RowKey>,
    settled: &mut bool,
) -> Result<()> {
    if !installed {
        return Ok(());
    }
    if slot.get().is_none() {
        let Some(k) = logkey::LogKey::load_or_create(tx.conn())? else {
            return Ok(());
        };
        let _ = slot.set(rowmark::RowKey::from_log_key(&k));
    }
    tx.row_key = slot.get().cloned();
    if !*settled {
        *settled = rowmark::backfill(tx)?;
    }
    Ok(())
}

/// Current time in the registry's timestamp format (see `model::Timestamp`).
pub fn now_rfc3339() -> String {
    crate::model::Timestamp::now().to_string()
}

/// `t` in the registry's timestamp format: RFC 3339, UTC, whole seconds, `Z`.
pub fn fmt_time(t: time::OffsetDateTime) -> String {
    crate::model::Timestamp::from(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_whole_seconds_with_z() {
        let t = time::macros::datetime!(2026-03-04 05:06:07.891 +02:00);
        assert_eq!(fmt_time(t), "2026-03-04T03:06:07Z");
        let t = time::macros::datetime!(0999-12-31 23:59:59 UTC);
        assert_eq!(fmt_time(t), "0999-12-31T23:59:59Z");
    }

    /// A registry file one migration behind this binary.
    fn older_registry(path: &Path) {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "page_size", PAGE_SIZE).unwrap();
        let _: String = c
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
        let n = schema::MIGRATIONS.len();
        for sql in &schema::MIGRATIONS[..n - 1] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", (n - 1) as i64)
            .unwrap();
    }

    #[test]
    fn a_station_waiting_for_another_stations_migration_does_not_rerun_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        older_registry(&path);
        // Station 1 is migrating: it holds the exclusive lock.
        let first = Connection::open(&path).unwrap();
        first.execute_batch("BEGIN EXCLUSIVE").unwrap();
        // Station 2 opens meanwhile: it sees the old version and waits for the lock.
        let p2 = path.clone();
        let second = std::thread::spawn(move || Store::open(&p2).map(|_| ()));
        std::thread::sleep(Duration::from_millis(300));
        let n = schema::MIGRATIONS.len();
        first.execute_batch(schema::MIGRATIONS[n - 1]).unwrap();
        first.pragma_update(None, "user_version", n as i64).unwrap();
        first.execute_batch("COMMIT").unwrap();
        // Before the version was re-read under the lock, station 2 re-ran the last
        // migration and failed with "duplicate column name".
        second.join().unwrap().unwrap();
        assert_eq!(Store::open(&path).unwrap().schema_version().unwrap(), n);
    }

    #[test]
    fn migrations_apply_once_and_are_idempotent() {
        let mut reg = Store::in_memory().unwrap();
        assert_eq!(reg.schema_version().unwrap(), schema::MIGRATIONS.len());
        reg.migrate().unwrap();
        assert_eq!(reg.schema_version().unwrap(), schema::MIGRATIONS.len());
    }

    #[test]
    fn new_registries_use_big_pages_and_trusted_writes_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Store::create(&dir.path().join("r.db")).unwrap();
        let ps: i64 = reg
            .sq()
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap();
        assert_eq!(ps, PAGE_SIZE);
        let fk = |reg: &Store| -> i64 {
            reg.sq()
                .pragma_query_value(None, "foreign_keys", |r| r.get(0))
                .unwrap()
        };
        let tx = reg.write_trusted().unwrap();
        tx.rollback().unwrap();
        assert_eq!(fk(&reg), 0);
        // An ordinary write transaction checks foreign keys again.
        let tx = reg.write().unwrap();
        let err = tx
            .conn()
            .execute(
                "INSERT INTO events (id, device_id, kind, actor, station, at, details, prev_hash, hash)
                 VALUES (1, 99, 'k', 'a', 's', 't', '{}', '', '')",
                [],
            )
            .unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
        drop(tx);
        reg.restore_checks().unwrap();
        assert_eq!(fk(&reg), 1);
    }

    #[test]
    fn bulk_leaves_wal_only_when_alone_and_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(Store::create(&path).unwrap());
        let mode = |c: &Connection| -> String {
            c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap()
        };
        let mut reg = Store::open(&path).unwrap();
        assert!(reg.begin_bulk().unwrap());
        assert_eq!(mode(reg.conn().lite().unwrap()), "delete");
        reg.end_bulk().unwrap();
        assert_eq!(mode(reg.conn().lite().unwrap()), "wal");

        // Another open connection (a reader in another process) keeps WAL mode.
        let other = Store::open(&path).unwrap();
        let _: i64 = other
            .conn()
            .query_row("SELECT count(*) FROM devices", [], |r| r.get(0))
            .unwrap();
        assert!(!reg.begin_bulk().unwrap());
        assert_eq!(mode(reg.conn().lite().unwrap()), "wal");
        reg.end_bulk().unwrap();
        drop(other);
        assert!(reg.begin_bulk().unwrap());
        reg.end_bulk().unwrap();
    }
}
