//! Shared helpers for integration tests: a temporary home and the real binary.
#![allow(dead_code)]

pub mod pg;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASS: &str = "correct horse battery staple";

/// Where a test home's registry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// CRADLE_TEST_BACKEND=postgres: PostgreSQL; anything else: SQLite.
    pub fn from_env() -> Backend {
        match std::env::var("CRADLE_TEST_BACKEND").as_deref() {
            Ok("postgres") => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }
}

/// A temporary cradle home with its own passphrase file; removed on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub pass_file: PathBuf,
    /// Extra environment for every command (e.g. SOFTHSM2_CONF for a test token).
    pub vars: Vec<(String, String)>,
    /// The PostgreSQL database of this home, when `init` ran on one (dropped with it).
    pub pg: Option<pg::PgDb>,
}

impl Env {
    /// An empty directory; `cradle init` not yet run.
    pub fn bare() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let pass_file = dir.path().join("ca.pass");
        std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
        // A passphrase file as it should be (others may not read it).
        std::fs::set_permissions(
            &pass_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        Env {
            dir,
            home,
            pass_file,
            vars: Vec::new(),
            pg: None,
        }
    }

    /// A home with `cradle init` run: on the home's SQLite file, or, with
    /// CRADLE_TEST_BACKEND=postgres, on a fresh PostgreSQL database of its own (one
    /// suite, two backends). `sql()`, `dump()`, `q()` and `hold_write_lock()` follow
    /// the home to its backend; `registry()` stays the SQLite file's path.
    pub fn init() -> Env {
        Env::init_on(Backend::from_env())
            .expect("CRADLE_TEST_BACKEND=postgres needs CRADLE_TEST_PG_URL")
    }

    /// A home with `cradle init` run on `backend`, whatever CRADLE_TEST_BACKEND says;
    /// None (the reason printed; a failure under CI=true) when there is no PostgreSQL
    /// server to test on.
    pub fn init_on(backend: Backend) -> Option<Env> {
        match backend {
            Backend::Sqlite => {
                let e = Env::bare();
                e.ok(&["init", "--org", "ACME", "--station", "test-station"]);
                Some(e)
            }
            Backend::Postgres => Some(Env::init_on_db(pg::PgDb::new("Env::init")?)),
        }
    }

    /// A home with `cradle init` run on the PostgreSQL database `db` (dropped with the
    /// home); a private cluster's password file goes to every command.
    pub fn init_on_db(db: pg::PgDb) -> Env {
        let mut e = Env::bare();
        if let Some(p) = &db.passfile {
            e.vars
                .push(("PGPASSFILE".into(), p.to_str().unwrap().to_string()));
        }
        e.ok(&[
            "init",
            "--org",
            "ACME",
            "--station",
            "test-station",
            "--registry",
            &db.url,
        ]);
        e.pg = Some(db);
        e
    }

    /// The backend this home's registry is on.
    pub fn backend(&self) -> Backend {
        match self.pg {
            Some(_) => Backend::Postgres,
            None => Backend::Sqlite,
        }
    }

    /// A home with a CA.
    pub fn with_ca() -> Env {
        Env::with_ca_on(Backend::from_env())
            .expect("CRADLE_TEST_BACKEND=postgres needs CRADLE_TEST_PG_URL")
    }

    /// A home with a CA on `backend` (None as for [`Env::init_on`]).
    pub fn with_ca_on(backend: Backend) -> Option<Env> {
        Some(Env::init_on(backend)?.and_ca())
    }

    /// This home after `cradle ca init`.
    pub fn and_ca(self) -> Env {
        let e = self;
        e.ok(&[
            "ca",
            "init",
            "--name",
            "Test",
            "--passphrase-file",
            e.pass(),
        ]);
        e
    }

    pub fn pass(&self) -> &str {
        self.pass_file.to_str().unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Copies `fixtures/DIR/NAME` into the test's directory; returns its (relative) name.
    pub fn fixture(&self, dir: &str, name: &str) -> String {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(dir)
            .join(name);
        std::fs::copy(&src, self.path(name)).unwrap();
        name.to_string()
    }

    /// The home's SQLite file (absent when the registry is on PostgreSQL).
    pub fn registry(&self) -> PathBuf {
        self.home.join("registry.db")
    }

    /// The home another station of this registry runs in: on PostgreSQL a copy of
    /// this one (config.toml with the URL, log.key, the CA), as a second station joins
    /// today; on SQLite this home itself, since its file is the registry.
    pub fn station_home(&self, name: &str) -> PathBuf {
        if self.pg.is_none() {
            return self.home.clone();
        }
        let to = self.dir.path().join(format!("home-{name}"));
        let st = Command::new("cp")
            .arg("-a")
            .arg(&self.home)
            .arg(&to)
            .status()
            .expect("cp");
        assert!(
            st.success(),
            "cp -a {} {}",
            self.home.display(),
            to.display()
        );
        to
    }

    /// The PostgreSQL registry's URL, when the home is on one.
    pub fn registry_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|db| db.url.as_str())
    }

    /// A `cradle` command with this home, no terminal, no inherited secrets.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cradle"));
        c.args(args)
            .env("CRADLE_HOME", &self.home)
            .env_remove("CRADLE_CA_PASSPHRASE")
            .env_remove("CRADLE_PKCS11_PIN")
            .env("CRADLE_OPERATOR", "tester")
            .env_remove("CRADLE_STATION")
            // A developer's PostgreSQL registry never reaches a test by accident.
            .env_remove("CRADLE_REGISTRY")
            .env_remove("PGPASSWORD")
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    /// This env with `key=value` set for every command it runs.
    pub fn with_var(mut self, key: &str, value: &str) -> Env {
        self.vars.push((key.into(), value.into()));
        self
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "cradle {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs and asserts the exit code; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.run(args);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(code),
            "cradle {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            String::from_utf8_lossy(&o.stdout)
        );
        stderr
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// A textual dump of the registry, to prove "unchanged": byte-exact from the
    /// sqlite3 shell (`.dump`), or on PostgreSQL the schema and every table's rows in
    /// a stable order (`pg::dump`).
    pub fn dump(&self) -> String {
        if let Some(db) = &self.pg {
            return pg::dump(&db.url, db.passfile.as_deref());
        }
        let o = Command::new("sqlite3")
            .arg(self.registry())
            .arg(".dump")
            .output()
            .expect("sqlite3 shell");
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs SQL behind cradle's back: the sqlite3 shell on the file, or psql on the
    /// home's PostgreSQL database, printing rows the same way (`a|b`, one a line,
    /// NULL as nothing) so one assertion holds on both. Values print as each server
    /// prints its types: PostgreSQL booleans are `t`/`f`, its timestamps
    /// `2026-12-01 10:00:00+00` (UTC), its bytea `\x…`; the SQL itself must suit both.
    pub fn sql(&self, sql: &str) -> String {
        if let Some(db) = &self.pg {
            return pg::sql_with(&db.url, db.passfile.as_deref(), sql);
        }
        let o = Command::new("sqlite3")
            .arg(self.registry())
            .arg(sql)
            .output()
            .expect("sqlite3 shell");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    /// Takes the registry's write lock from another connection, as another station in
    /// the middle of a transaction would: `BEGIN IMMEDIATE` in the sqlite3 shell, or on
    /// PostgreSQL a psql transaction holding the chain lock, which every cradle write
    /// transaction takes at its start.
    pub fn hold_write_lock(&self) -> WriteLock {
        let (mut child, begin) = match &self.pg {
            Some(db) => (
                pg::session(&db.url, db.passfile.as_deref()),
                format!(
                    "BEGIN;\nSELECT pg_advisory_xact_lock({});\nSELECT 'locked';\n",
                    cradle::store::schema_pg::CHAIN_LOCK
                ),
            ),
            None => (
                Command::new("sqlite3")
                    .arg(self.registry())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("sqlite3 shell"),
                "BEGIN IMMEDIATE;\nSELECT 'locked';\n".to_string(),
            ),
        };
        let mut lock = WriteLock {
            out: BufReader::new(child.stdout.take().unwrap()),
            child,
        };
        lock.send(&begin, "locked");
        lock
    }

    /// Starts `cradle args` while another connection holds the write lock, gives it
    /// time to read what it needs and queue for the lock, then commits `sql` in that
    /// other transaction, as another station would; returns cradle's output. (A
    /// command slower than the pause sees the change before it reads: the tests
    /// using this expect what a command that saw it in its transaction does.)
    pub fn race(&self, args: &[&str], sql: &str) -> Output {
        let lock = self.hold_write_lock();
        let child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        lock.commit_with(sql);
        child.wait_with_output().unwrap()
    }

    /// Files in the temp dir (relative paths), to prove "nothing half-written".
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out
    }
}

/// A write transaction held open by the sqlite3 shell or psql (`Env::hold_write_lock`).
pub struct WriteLock {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl WriteLock {
    fn send(&mut self, sql: &str, until: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "the SQL shell holding the lock ended before '{until}'"
            );
            if line.trim() == until {
                return;
            }
        }
    }

    /// Runs `sql` in the held transaction and commits it.
    pub fn commit_with(mut self, sql: &str) {
        self.send(
            &format!("{sql}\nCOMMIT;\nSELECT 'committed';\n"),
            "committed",
        );
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
}

/// The directory holding pkilint's scripts: `CRADLE_TEST_PKILINT` (set by `.ci/run`),
/// else the venv `.ci/run` creates. On CI a missing tool fails the test.
pub fn pkilint_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("CRADLE_TEST_PKILINT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin"));
    if dir.join("lint_pkix_cert").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "pkilint not found in {} (.ci/run installs it)",
        dir.display()
    );
    eprintln!("skipping: pkilint not installed (run .ci/run or set CRADLE_TEST_PKILINT)");
    None
}

/// Runs pkilint's `tool` (`lint -s WARNING -f JSON`) on `file`; returns its findings,
/// each with its node path.
pub fn pkilint(bin: &Path, tool: &str, extra: &[&str], file: &Path) -> Vec<serde_json::Value> {
    let o = Command::new(bin.join(tool))
        .args(["lint", "-s", "WARNING", "-f", "JSON"])
        .args(extra)
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "{tool} on {}: {text}{}",
            file.display(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let mut found = Vec::new();
    for r in v["results"].as_array().unwrap() {
        for f in r["finding_descriptions"].as_array().unwrap() {
            let mut f = f.clone();
            f["node_path"] = r["node_path"].clone();
            found.push(f);
        }
    }
    found
}

/// Runs openssl with args; returns (success, stdout+stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// SIGTERM to our own child, then up to 5 s for it to exit (SIGKILL after that);
/// returns its exit status.
pub fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok();
    None
}

/// Waits for `child` (stdout and stderr piped) and returns its output, draining both
/// pipes meanwhile. After `limit` it is stopped and the test fails with what it
/// printed: a guard against a station that never ends, not a timed assertion.
pub fn wait_output(mut child: Child, what: &str, limit: Duration) -> Output {
    use std::io::Read;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= until {
            terminate(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!(
            "{what} did not end within {limit:?}; stopped it.\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A child process of a test (stdout and stderr piped), stopped with [`terminate`] if
/// the test ends before it does, so a failing assertion leaks no process.
pub struct Running {
    child: Option<Child>,
    pub what: String,
}

impl Running {
    pub fn new(what: &str, child: Child) -> Running {
        Running {
            child: Some(child),
            what: what.to_string(),
        }
    }

    /// Whether it has ended (its output is still there for [`Running::wait`]).
    pub fn ended(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    /// Its output once it ended, within `limit` (see [`wait_output`]).
    pub fn wait(mut self, limit: Duration) -> Output {
        wait_output(self.child.take().unwrap(), &self.what, limit)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            terminate(c);
        }
    }
}

/// Fast simulated line for tests (the benchmarks measure real rates).
pub const SIM_BAUD: &str = "2000000";

/// A running `cradle sim`; SIGTERM + wait on drop, so no process or pty is leaked.
pub struct Sim {
    pub child: Child,
    /// The pty paths the simulator printed.
    pub paths: Vec<PathBuf>,
}

impl Sim {
    /// A simulator in strict mode (`--strict`): the host under test is held to the exact
    /// forms of cradle-protocol(7) in every test that provisions or wipes.
    pub fn start(env: &Env, args: &[&str], count: usize) -> Sim {
        let mut a = vec!["--strict"];
        a.extend_from_slice(args);
        Sim::start_lenient(env, &a, count)
    }

    /// A simulator that takes what the page forbids, where a lenient device would cope.
    pub fn start_lenient(env: &Env, args: &[&str], count: usize) -> Sim {
        Sim::start_at(env, SIM_BAUD, args, count)
    }

    /// A lenient simulator on a line of `baud` instead of the fast test line (for a
    /// test that needs devices to take a while).
    pub fn start_at(env: &Env, baud: &str, args: &[&str], count: usize) -> Sim {
        let mut a = vec!["sim", "--baud", baud];
        a.extend_from_slice(args);
        let mut child = env
            .cmd(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cradle sim");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut paths = Vec::new();
        for _ in 0..count {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(line.starts_with("/dev/"), "sim printed {line:?}");
            paths.push(PathBuf::from(line.trim()));
        }
        // Keep draining stdout (re-appearing devices print again) so the sim never blocks.
        std::thread::spawn(move || for _ in out.lines() {});
        Sim { child, paths }
    }
    pub fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A peer tool's bin directory from `var` (exported by `.ci/run`), else the venv
/// `.ci/run` makes, if it holds `probe`. Without it a dev box skips (None, said on
/// stderr); CI fails instead.
pub fn peer_bin(var: &str, probe: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv/bin"));
    if dir.join(probe).exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{probe} not found in {} (set {var}; .ci/run installs it)",
        dir.display()
    );
    eprintln!("skipping: {probe} not found (run .ci/run or set {var})");
    None
}

/// One value (or rows joined by newlines) from the registry, trimmed.
pub fn q(env: &Env, sql: &str) -> String {
    env.sql(sql).trim().to_string()
}

/// `cradle --json provision` on `ports` at the test baud with a 1 s timeout and then
/// `extra`: the exit code, the result rows as JSON and stderr.
pub fn provision_json(
    env: &Env,
    ports: &[&str],
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut a = vec![
        "--json",
        "provision",
        "--passphrase-file",
        env.pass(),
        "--baud",
        SIM_BAUD,
        "--timeout",
        "1",
    ];
    for p in ports {
        a.extend(["--port", p]);
    }
    a.extend_from_slice(extra);
    let o = env.run(&a);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&o.stdout)
        )
    });
    (o.status.code(), v, stderr)
}

/// Runs `cradle --json audit ARGS`; returns (exit code, parsed output).
pub fn audit(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["--json", "audit"];
    a.extend_from_slice(args);
    let o = env.run(&a);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|err| {
        panic!(
            "audit output is not JSON ({err}):\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap(), v)
}

/// (check, device) of every finding of an audit's JSON ("-" for fleet-wide ones).
pub fn found(v: &serde_json::Value) -> std::collections::BTreeSet<(String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                f["device"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

/// The (check, device) set `found` returns, from literals.
pub fn set(items: &[(&str, &str)]) -> std::collections::BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
