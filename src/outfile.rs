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
    w: BufWriter<NamedTempFile>,
    path: PathBuf,
}

impl OutFile {
    /// A temporary file beside `path` with `mode`. `keep` lists files that `path`
    /// must not be (compared by device and inode, so links and other spellings count).
    pub fn create(path: &Path, mode: u32, keep: &[&Path]) -> Result<OutFile> {
        if let Some(k) = keep.iter().find(|k| same_file(path, k)) {
            return Err(Error::usage(format!(
                "{}: refusing to write over {}",
                path.display(),
                k.display()
            )));
        }
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".cradle-tmp")
            .permissions(fs::Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        Ok(OutFile {
            w: BufWriter::with_capacity(1 << 20, tmp),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .w
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
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
        let mut f = OutFile::create(&p, 0o644, &[]).unwrap();
        f.write_all(b"new").unwrap();
        drop(f);
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        let mut f = OutFile::create(&p, 0o644, &[]).unwrap();
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
}
