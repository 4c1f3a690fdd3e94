//! The PostgreSQL server of the registry tests (issue 14): `.ci/run` starts a
//! throw-away cluster and exports CRADLE_TEST_PG_URL (no password: PGPASSFILE). Each
//! test gets its own database, dropped when it ends. Without the variable a test
//! skips with a printed reason, except under CI=true, where that is a failure.

use std::process::Command;

/// The server's URL, or None (after printing why) when this machine has none.
pub fn server(test: &str) -> Option<String> {
    match std::env::var("CRADLE_TEST_PG_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var("CI").map(|v| v != "true").unwrap_or(true),
                "{test}: CRADLE_TEST_PG_URL is not set under CI=true: .ci/run must start the PostgreSQL cluster"
            );
            eprintln!(
                "skipped {test}: CRADLE_TEST_PG_URL is not set (source /work/briefs/pg-env.sh or run .ci/run)"
            );
            None
        }
    }
}

/// psql, from the cluster's bin directory when .ci/run named it.
fn psql() -> Command {
    let bin = std::env::var("CRADLE_TEST_PG_BIN")
        .map(|d| format!("{d}/psql"))
        .unwrap_or_else(|_| "psql".into());
    let mut c = Command::new(bin);
    c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    c
}

/// Runs `sql` with psql against `url`; returns its output (rows as `a|b`).
pub fn sql(url: &str, sql: &str) -> String {
    let o = psql().arg(url).arg("-c").arg(sql).output().expect("psql");
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A database of its own for one test, dropped on drop.
pub struct PgDb {
    admin: String,
    pub name: String,
    /// The database's URL (no password).
    pub url: String,
}

impl PgDb {
    pub fn new(test: &str) -> Option<PgDb> {
        let admin = server(test)?;
        let mut r = [0u8; 6];
        getrandom(&mut r);
        let name = format!("cradle_t_{}", hex(&r));
        sql(&admin, &format!("CREATE DATABASE {name}"));
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b.to_string(), format!("?{q}")),
            None => (admin.clone(), String::new()),
        };
        let base = base
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(base);
        let url = format!("{base}/{name}{query}");
        Some(PgDb { admin, name, url })
    }

    /// Runs SQL in this database (behind cradle's back).
    pub fn sql(&self, q: &str) -> String {
        sql(&self.url, q)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql()
            .arg(&self.admin)
            .arg("-c")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
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
