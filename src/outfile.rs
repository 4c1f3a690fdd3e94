//! Output files that appear whole or not at all.
//!
//! Data goes to a temporary file beside the target, which is renamed over it only on
//! `commit`: a failure or a kill leaves the old file (or none), never half of one.
//! `create` also refuses a target that is a file cradle must not replace, such as
//! the registry or the CSV being imported, because the rename would destroy it.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

pub struct OutFile {
    w: BufWriter<Target>,
    path: PathBuf,
}

/// A regular file is replaced by rename; anything else that exists already (a
/// terminal, `/dev/stdout`, a FIFO) is written in place, as a plain open would.
enum Target {
    Temp(NamedTempFile),
    Direct(fs::File),
}

impl Write for Target {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Target::Temp(f) => f.write(buf),
            Target::Direct(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Target::Temp(f) => f.flush(),
            Target::Direct(f) => f.flush(),
        }
    }
}

impl OutFile {
    /// A temporary file beside `path` with `mode`. `keep` lists files that `path`
    /// must not be (compared by device and inode, so links and other spellings count).
    pub fn create(path: &Path, mode: u32, keep: &[impl AsRef<Path>]) -> Result<OutFile> {
        refuse_protected(path)?;
        OutFile::create_unguarded(path, mode, keep)
    }

    /// As `create`, for cradle's own files under the home (the published CRL).
    fn create_unguarded(path: &Path, mode: u32, keep: &[impl AsRef<Path>]) -> Result<OutFile> {
        let keep = keep.iter().map(AsRef::as_ref);
        if let Some(k) = keep.into_iter().find(|k| same_file(path, k)) {
            return Err(Error::usage(format!(
                "{}: refusing to write over {}",
                path.display(),
                k.display()
            )));
        }
        let target = match fs::metadata(path) {
            Ok(m) if !m.is_file() && !m.is_dir() => Target::Direct(
                fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?,
            ),
            _ => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                Target::Temp(
                    tempfile::Builder::new()
                        .prefix(".cradle-tmp")
                        .permissions(fs::Permissions::from_mode(mode))
                        .tempfile_in(dir)
                        .map_err(|e| Error::io(dir, e))?,
                )
            }
        };
        Ok(OutFile {
            w: BufWriter::with_capacity(1 << 20, target),
            path: path.to_path_buf(),
        })
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(self) -> Result<()> {
        self.finish(true)
    }

    /// As `commit`, but fails if a file appeared at the target meanwhile (for files that
    /// must never be replaced, such as keys).
    pub fn commit_new(self) -> Result<()> {
        self.finish(false)
    }

    /// As `commit`, without the fsync: for many small files that can be made again
    /// (labels), where a sync per file costs more than the work. Still whole or absent
    /// while the system runs; a power cut may leave one empty.
    pub fn commit_unsynced(self) -> Result<()> {
        self.persist(true, false)
    }

    fn finish(self, clobber: bool) -> Result<()> {
        self.persist(clobber, true)
    }

    fn persist(self, clobber: bool, sync: bool) -> Result<()> {
        let path = self.path;
        let target = self
            .w
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        match target {
            Target::Temp(tmp) => {
                if sync {
                    tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
                }
                if clobber {
                    tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
                } else {
                    tmp.persist_noclobber(&path)
                        .map_err(|e| Error::io(&path, e.error))?;
                }
            }
            Target::Direct(_) => {}
        }
        Ok(())
    }
}

impl Write for OutFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.w.write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Writes a secret file with mode 0600, atomically (temp file + rename), never replacing
/// an existing file.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    write_file_atomic(path, contents, 0o600, false)
}

/// Creates a new file with `mode` and writes it, without fsync (bulk output, where the
/// registry commit that follows is the durability point).
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = create_new(path, mode)?;
    f.write_all(contents).map_err(|e| Error::io(path, e))
}

/// Opens a file that must not exist yet, created with `mode` (an existing file, a CA
/// key included, is never truncated or replaced).
pub fn create_new(path: &Path, mode: u32) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// Writes a file atomically with `mode`; `overwrite` allows replacing an existing one
/// (a target that is not a regular file, such as `/dev/stdout`, is written in place).
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::conflict(format!(
            "{} already exists; not overwriting",
            path.display()
        )));
    }
    let mut f = OutFile::create(path, mode, &[] as &[&Path])?;
    f.write_all(contents).map_err(|e| Error::io(path, e))?;
    if overwrite {
        f.commit()
    } else {
        f.commit_new()
    }
}

/// Replaces a file cradle itself keeps (the published CRL, a simulator's state): the
/// writers allowed past the home and private-key guard.
pub fn replace_own_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = OutFile::create_unguarded(path, mode, &[] as &[&Path])?;
    f.write_all(contents).map_err(|e| Error::io(path, e))?;
    f.commit()
}

/// The home whose files no output may replace (set once by the CLI).
static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Protects every file under `home` (CA keys and chain, audit key, config, templates,
/// the registry and its WAL) from being replaced by an output file.
pub fn protect_home(home: &Path) {
    let _ = HOME.set(home.to_path_buf());
}

/// Refuses an output path that already names a file under the protected home (by
/// device and inode, so symlinks, `..` and hard links count) or a private key file.
fn refuse_protected(path: &Path) -> Result<()> {
    let Ok(target) = fs::metadata(path) else {
        return Ok(()); // nothing there to replace
    };
    if !target.is_file() {
        return Ok(()); // /dev/stdout, a pipe: written in place, replaces nothing
    }
    if let Some(hit) = HOME.get().and_then(|h| find_same(h, &target, 0)) {
        return Err(Error::usage(format!(
            "{}: refusing to write over {}, a file of the cradle home",
            path.display(),
            hit.display()
        )));
    }
    if holds_private_key(path) {
        return Err(Error::usage(format!(
            "{}: refusing to write over a private key file",
            path.display()
        )));
    }
    Ok(())
}

/// A file under `dir` (not following links) that is the same file as `target`.
fn find_same(dir: &Path, target: &fs::Metadata, depth: u32) -> Option<PathBuf> {
    // The home is shallow (ca/, templates/); the bound keeps a stray link farm cheap.
    if depth > 4 {
        return None;
    }
    for e in fs::read_dir(dir).ok()?.flatten() {
        let Ok(m) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            if let Some(hit) = find_same(&e.path(), target, depth + 1) {
                return Some(hit);
            }
        } else if m.dev() == target.dev() && m.ino() == target.ino() {
            return Some(e.path());
        }
    }
    None
}

/// Whether the file starts like a PEM private key (PKCS#8, encrypted, EC or RSA).
fn holds_private_key(path: &Path) -> bool {
    let mut head = [0u8; 4096];
    let n = fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    head[..n].windows(16).any(|w| w == b"PRIVATE KEY-----")
}

/// Files written ahead of the registry commit that makes them count: dropped before
/// `keep`, the guard removes them again, so "files first, commit, else remove them"
/// needs no clean-up code on each error path.
#[derive(Debug, Default)]
#[must_use = "dropping the guard removes the staged files"]
pub struct StagedFiles {
    staged: Vec<Staged>,
}

#[derive(Debug)]
enum Staged {
    File(PathBuf),
    Tree(PathBuf),
}

impl StagedFiles {
    pub fn new() -> StagedFiles {
        StagedFiles::default()
    }

    /// Takes charge of a file the caller created.
    pub fn add(&mut self, path: impl Into<PathBuf>) {
        self.staged.push(Staged::File(path.into()));
    }

    /// Takes charge of a directory the caller created, with everything under it.
    pub fn add_tree(&mut self, dir: impl Into<PathBuf>) {
        self.staged.push(Staged::Tree(dir.into()));
    }

    /// Writes a new file atomically with `mode` (never replacing one) and stages it.
    pub fn write_new(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        write_file_atomic(path, contents, mode, false)?;
        self.add(path);
        Ok(())
    }

    /// As `write_new`, without fsync (bulk output, see `write_new_file`).
    pub fn write_new_unsynced(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        write_new_file(path, contents, mode)?;
        self.add(path);
        Ok(())
    }

    /// The files are committed: they stay.
    pub fn keep(mut self) {
        self.staged.clear();
    }

    /// Removes the staged files now (what dropping the guard does).
    pub fn discard(self) {}
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        // Newest first, so files go before a tree that may hold them. Best effort: the
        // error that got us here is the one to report.
        for s in self.staged.drain(..).rev() {
            let _ = match s {
                Staged::File(p) => fs::remove_file(p),
                Staged::Tree(p) => fs::remove_dir_all(p),
            };
        }
    }
}

/// True when both paths name one existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_whole_and_drop_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.csv");
        fs::write(&p, "old").unwrap();
        let mut f = OutFile::create(&p, 0o644, &[] as &[&Path]).unwrap();
        f.write_all(b"new").unwrap();
        drop(f);
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        let mut f = OutFile::create(&p, 0o644, &[] as &[&Path]).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn refuses_a_kept_file_by_any_name() {
        let d = tempfile::tempdir().unwrap();
        let keep = d.path().join("registry.db");
        fs::write(&keep, "db").unwrap();
        let link = d.path().join("link.db");
        std::os::unix::fs::symlink(&keep, &link).unwrap();
        let other = d.path().join("sub/../registry.db");
        fs::create_dir(d.path().join("sub")).unwrap();
        for p in [&keep, &link, &other] {
            let e = OutFile::create(p, 0o644, &[&keep]).err().expect("refused");
            assert_eq!(e.exit_code(), crate::error::exit::USAGE, "{e}");
            assert!(e.to_string().contains("refusing to write over"), "{e}");
        }
        assert_eq!(fs::read_to_string(&keep).unwrap(), "db");
        assert!(OutFile::create(&d.path().join("new.csv"), 0o644, &[&keep]).is_ok());
    }

    #[test]
    fn secret_files_are_0600_and_never_replace_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("issuing.key");
        write_secret_file(&p, b"secret").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let e = write_secret_file(&p, b"other").unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::CONFLICT, "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        let n = d.path().join("bulk.key");
        write_new_file(&n, b"k", 0o600).unwrap();
        assert_eq!(fs::metadata(&n).unwrap().mode() & 0o777, 0o600);
        assert!(write_new_file(&n, b"k2", 0o600).is_err());
        write_file_atomic(&n, b"k3", 0o644, true).unwrap();
        assert_eq!(fs::read(&n).unwrap(), b"k3");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            2,
            "no temporary left"
        );
    }

    #[test]
    fn staged_files_are_removed_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.key"), d.path().join("b.pem"));
        let tree = d.path().join("home");
        fs::create_dir_all(tree.join("ca")).unwrap();
        fs::write(tree.join("ca/x"), "x").unwrap();
        fs::write(&b, "someone else's").unwrap();
        let mut staged = StagedFiles::new();
        staged.add_tree(&tree);
        staged.write_new(&a, b"key", 0o600).unwrap();
        assert_eq!(fs::metadata(&a).unwrap().mode() & 0o777, 0o600);
        // A file that exists is neither replaced nor taken over.
        assert!(staged.write_new(&b, b"mine", 0o644).is_err());
        drop(staged);
        assert!(!a.exists() && !tree.exists());
        assert_eq!(fs::read_to_string(&b).unwrap(), "someone else's");

        let mut staged = StagedFiles::new();
        staged.write_new_unsynced(&a, b"key", 0o600).unwrap();
        staged.keep();
        assert_eq!(fs::read(&a).unwrap(), b"key");
        let mut staged = StagedFiles::new();
        staged.add(&a);
        staged.discard();
        assert!(!a.exists());
    }

    #[test]
    fn a_device_is_written_in_place() {
        // /dev/null stands for /dev/stdout or a FIFO: never renamed over.
        let mut f = OutFile::create(Path::new("/dev/null"), 0o644, &[] as &[&Path]).unwrap();
        f.write_all(b"rows").unwrap();
        f.commit().unwrap();
        assert!(!fs::metadata("/dev/null").unwrap().is_file());
    }
}
