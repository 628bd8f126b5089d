//! Turning paths into members: optional file creation for `--size`, exclusive open.

use std::path::Path;
use std::rc::Rc;

use raidcore::member::{FileMember, Member, OpenOptions};
use raidcore::{Error, Result};

/// What `prepare_files` did to one path, so a failed create can undo it.
pub struct Prepared {
    pub path: String,
    /// The file did not exist (or was empty) before: its contents are all zeroes.
    pub fresh: bool,
    created: bool,
    /// Length before we extended it (None: not extended).
    original_len: Option<u64>,
}

/// Creates or extends regular files to `size` (never shrinks). Block devices are refused.
pub fn prepare_files(paths: &[String], size: Option<u64>) -> Result<Vec<Prepared>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path);
        let (exists, len, is_file) = match &meta {
            Ok(m) => (true, m.len(), m.file_type().is_file()),
            Err(_) => (false, 0, false),
        };
        let Some(size) = size else {
            if !exists {
                undo(&out);
                return Err(Error::invalid(format!(
                    "{path} does not exist: give --size SIZE to create member files"
                )));
            }
            out.push(Prepared {
                path: path.clone(),
                fresh: is_file && len == 0,
                created: false,
                original_len: None,
            });
            continue;
        };
        if exists && !is_file {
            undo(&out);
            return Err(Error::invalid(format!(
                "--size only creates or extends regular files; {path} is not one"
            )));
        }
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            if !parent.is_dir() {
                undo(&out);
                return Err(Error::invalid(format!(
                    "cannot create {path}: directory {} does not exist",
                    parent.display()
                )));
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                undo(&out);
                Error::io(format!("cannot create {path}"), e)
            })?;
        let extended = len < size;
        out.push(Prepared {
            path: path.clone(),
            fresh: len == 0,
            created: !exists,
            original_len: extended.then_some(len),
        });
        if extended {
            if let Err(e) = file.set_len(size) {
                undo(&out);
                return Err(Error::io(format!("cannot extend {path}"), e));
            }
        }
    }
    Ok(out)
}

/// Puts back what `prepare_files` did: removes the files it created and shrinks the ones it
/// extended to their old length (extension only appended zeroes, so this restores them).
pub fn undo(prepared: &[Prepared]) {
    for p in prepared {
        if p.created {
            let _ = std::fs::remove_file(&p.path);
        } else if let Some(len) = p.original_len {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p.path) {
                let _ = f.set_len(len);
            }
        }
    }
}

/// Opens and claims members for writing.
pub fn open_members(paths: &[String]) -> Result<Vec<Rc<dyn Member>>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<Rc<dyn Member>> = Vec::new();
    for path in paths {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
        if !seen.insert(canonical) {
            return Err(Error::invalid(format!(
                "{path} is given twice: every member must be a different device"
            )));
        }
        let m = FileMember::open(path, OpenOptions::default())?;
        out.push(Rc::new(m));
    }
    Ok(out)
}
