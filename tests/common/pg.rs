//! The PostgreSQL server of the registry tests (issue 14): `.ci/run` starts a
//! throw-away cluster and exports CRADLE_TEST_PG_URL (no password: PGPASSFILE). Each
//! test gets its own database, dropped when it ends. Without the variable a test
//! skips with a printed reason, except under CI=true, where that is a failure.
//!
//! Tests that stop the server (faults) must not stop that shared cluster, which other
//! tests use in parallel: they start a [`Cluster`] of their own.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The server's URL, or None (after printing why) when this machine has none.
pub fn server(test: &str) -> Option<String> {
    match std::env::var("CRADLE_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            missing(
                test,
                "CRADLE_TEST_PG_URL is not set (source /work/briefs/pg-env.sh or run .ci/run)",
            );
            None
        }
    }
}

/// A missing PostgreSQL peer: a failure under CI=true, else a printed skip.
fn missing(test: &str, why: &str) {
    assert!(
        std::env::var("CI").map(|v| v != "true").unwrap_or(true),
        "{test}: {why}, under CI=true: .ci/run must provide PostgreSQL"
    );
    eprintln!("skipped {test}: {why}");
}

/// A PostgreSQL program (psql, pg_dump, initdb, pg_ctl), from the cluster's bin
/// directory when .ci/run named it, else from PATH.
pub fn bin(name: &str) -> PathBuf {
    match std::env::var_os("CRADLE_TEST_PG_BIN") {
        Some(d) => Path::new(&d).join(name),
        None => PathBuf::from(name),
    }
}

/// psql as the tests run it: no ~/.psqlrc, unaligned tuples only (rows as `a|b`, as
/// the sqlite3 shell prints them), quiet (no `UPDATE 1` tags), stop at the first error;
/// `passfile` instead of the inherited PGPASSFILE (a private cluster's).
fn psql(passfile: Option<&Path>) -> Command {
    let mut c = Command::new(bin("psql"));
    c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    if let Some(p) = passfile {
        c.env("PGPASSFILE", p);
    }
    // Timestamps print the same whatever the server's zone: `2026-12-01 10:00:00+00`.
    c.env_remove("PGPASSWORD")
        .env("PGTZ", "UTC")
        .env("PGDATESTYLE", "ISO");
    c
}

/// Runs `sql` with psql against `url`; returns its output (rows as `a|b`), trimmed.
pub fn sql(url: &str, sql: &str) -> String {
    sql_with(url, None, sql).trim().to_string()
}

/// Runs a script with psql (`-f -`: every statement's rows are printed, as the sqlite3
/// shell does, where `-c` would print only the last one); its output, untrimmed.
pub fn sql_with(url: &str, passfile: Option<&Path>, sql: &str) -> String {
    let mut child = psql(passfile)
        .arg(url)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    // A script larger than the pipe: write it while psql reads.
    let mut stdin = child.stdin.take().unwrap();
    let script = sql.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
        let _ = stdin.write_all(b"\n");
    });
    let o = child.wait_with_output().expect("psql");
    writer.join().unwrap();
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A stable textual dump of a database, to prove "unchanged" as `Env::dump` does on
/// SQLite: the schema (`pg_dump --schema-only`, ordered by pg_dump), then every
/// table's rows in one snapshot, sorted by the whole row. Not `pg_dump --data-only`:
/// that writes rows in heap order, which an UPDATE to the same values changes, and
/// sequence positions, which a rolled-back insert advances, neither of them data.
pub fn dump(url: &str, passfile: Option<&Path>) -> String {
    let mut c = Command::new(bin("pg_dump"));
    c.args(["--schema-only", "--no-owner", "--no-privileges", "-d", url]);
    if let Some(p) = passfile {
        c.env("PGPASSFILE", p);
    }
    let o = c.env_remove("PGPASSWORD").output().expect("pg_dump");
    assert!(
        o.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // pg_dump >= 15.14 fences its output with `\restrict KEY` lines, a new random KEY
    // each run: not the database's content.
    let mut out: String = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .flat_map(|l| [l, "\n"])
        .collect();
    let tables = sql_with(
        url,
        passfile,
        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    );
    let mut script = String::from("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n");
    for t in tables.lines().filter(|t| !t.is_empty()) {
        // `\echo` marks where each table starts; COPY text rows are one line each.
        script.push_str(&format!(
            "\\echo '-- rows of {t}'\nCOPY (SELECT * FROM {t} ORDER BY {t}) TO STDOUT;\n"
        ));
    }
    script.push_str("COMMIT;\n");
    out.push_str(&sql_with(url, passfile, &script));
    out
}

/// An interactive psql session on `url` (stdin and stdout piped, rows as `a|b`), for
/// a transaction held open across steps of a test (`Env::hold_write_lock`).
pub fn session(url: &str, passfile: Option<&Path>) -> Child {
    psql(passfile)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql")
}

/// A database of its own for one test, dropped on drop.
pub struct PgDb {
    admin: String,
    pub name: String,
    /// The database's URL (no password).
    pub url: String,
    /// The password file of its server when it is not the inherited PGPASSFILE (a
    /// private [`Cluster`]'s).
    pub passfile: Option<PathBuf>,
}

impl PgDb {
    /// A fresh database on the shared test server (None, printed, without one).
    pub fn new(test: &str) -> Option<PgDb> {
        let admin = server(test)?;
        Some(PgDb::create(admin, None))
    }

    /// A fresh database on a private cluster.
    pub fn on(cluster: &Cluster) -> PgDb {
        PgDb::create(cluster.admin_url.clone(), Some(cluster.passfile.clone()))
    }

    fn create(admin: String, passfile: Option<PathBuf>) -> PgDb {
        let mut r = [0u8; 6];
        getrandom(&mut r);
        let name = format!("cradle_t_{}", hex(&r));
        sql_with(
            &admin,
            passfile.as_deref(),
            &format!("CREATE DATABASE {name}"),
        );
        let url = sibling_url(&admin, &name);
        PgDb {
            admin,
            name,
            url,
            passfile,
        }
    }

    /// Runs SQL in this database (behind cradle's back); output trimmed.
    pub fn sql(&self, q: &str) -> String {
        sql_with(&self.url, self.passfile.as_deref(), q)
            .trim()
            .to_string()
    }
}

/// `url` with its database replaced by `name` (its query string kept).
pub fn sibling_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_string(), format!("?{q}")),
        None => (url.to_string(), String::new()),
    };
    let base = base
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(base);
    format!("{base}/{name}{query}")
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let mut c = psql(self.passfile.as_deref());
        let _ = c
            .arg(&self.admin)
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stderr(Stdio::null())
            .output();
    }
}

/// A throw-away PostgreSQL cluster of one test's own, as .ci/pg-cluster.sh makes the
/// shared one: initdb and pg_ctl as the `postgres` user when run as root (initdb
/// refuses root), scram-sha-256 for a superuser `cradle` with a generated password in
/// its own pgpass (0600), listening on 127.0.0.1 at a free port. For tests that stop
/// the server; stopped (immediately) and removed on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    pub port: u16,
    /// `postgresql://cradle@127.0.0.1:PORT/postgres`
    pub admin_url: String,
    pub passfile: PathBuf,
}

impl Cluster {
    /// Starts one (None, printed, when this machine has no initdb; a failure under CI).
    pub fn start(test: &str) -> Option<Cluster> {
        if !bin("initdb").exists() && which("initdb").is_none() {
            missing(
                test,
                "no initdb (set CRADLE_TEST_PG_BIN or install postgresql)",
            );
            return None;
        }
        let root = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("cradle-pgc.")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let mut pw = [0u8; 24];
        getrandom(&mut pw);
        let pw = hex(&pw);
        // The password reaches initdb through a file only the cluster's user reads.
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{pw}\n")).unwrap();
        set_mode(&pwfile, 0o600);
        if root {
            // Only to the postgres user; /tmp/cradle-pgc.* is 0700, so handed over whole.
            chown_postgres(dir.path());
            chown_postgres(&pwfile);
        }
        let o = server_cmd(root, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "cradle", "--auth-host=scram-sha-256"])
            .args(["--auth-local=scram-sha-256", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb");
        assert!(
            o.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::remove_file(&pwfile).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // In the configuration, so a restart comes back on the same port.
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 50\n",
            dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        f.write_all(conf.as_bytes()).unwrap();
        let passfile = dir.path().join("pgpass");
        std::fs::write(&passfile, format!("127.0.0.1:{port}:*:cradle:{pw}\n")).unwrap();
        set_mode(&passfile, 0o600);
        let c = Cluster {
            admin_url: format!("postgresql://cradle@127.0.0.1:{port}/postgres"),
            dir,
            data,
            port,
            passfile,
        };
        c.resume();
        Some(c)
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let root = unsafe { libc::geteuid() } == 0;
        server_cmd(root, "pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .output()
            .expect("pg_ctl")
    }

    /// Stops the server at once (`-m immediate`: as a crash or a pulled cable does,
    /// no goodbye to the clients), waiting until it is down.
    pub fn stop(&self) {
        let o = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        assert!(
            o.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Starts it (again), waiting until it accepts connections.
    pub fn resume(&self) {
        let log = self.dir.path().join("server.log");
        let o = self.pg_ctl(&["-w", "-t", "60", "-l", log.to_str().unwrap(), "start"]);
        assert!(
            o.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        }
    }
}

/// initdb/pg_ctl: as the `postgres` user when we are root (they refuse root).
fn server_cmd(root: bool, name: &str) -> Command {
    let prog = if bin(name).exists() {
        bin(name)
    } else {
        which(name).unwrap_or_else(|| PathBuf::from(name))
    };
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(prog);
        c
    } else {
        Command::new(prog)
    }
}

fn chown_postgres(p: &Path) {
    let st = Command::new("chown")
        .arg("postgres")
        .arg(p)
        .status()
        .expect("chown");
    assert!(st.success(), "chown postgres {}", p.display());
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
