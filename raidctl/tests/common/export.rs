//! Copying through the array's NBD export with nbdcopy (libnbd-bin).

use std::fs;
use std::path::PathBuf;

use super::array::Array;
use super::process::run;
use super::s;
use super::tools::require;

impl Array {
    /// `nbdcopy ARGS...` (the export's URI among them), which must succeed.
    pub fn nbdcopy(&self, args: &[&str]) {
        let nbdcopy = require("nbdcopy", "libnbd-bin");
        self.check(run(self.command(nbdcopy, args)));
    }

    /// Reads the whole export into DIR/`file`.
    pub fn read_export(&self, file: &str) -> PathBuf {
        let out = self.path(file);
        let _ = fs::remove_file(&out);
        self.nbdcopy(&[&self.uri(), &s(&out)]);
        out
    }
}
