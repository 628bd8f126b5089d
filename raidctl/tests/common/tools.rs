//! The tools and privileges the tests need: a missing one fails the test (never skips it),
//! saying what to install.

use std::path::PathBuf;

/// Where a tool is on $PATH (plus the sbin directories root has).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// The tool's path; panics when it is not installed, naming the Debian package.
pub fn require(tool: &str, package: &str) -> PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!("`{tool}` is not installed: these tests need it (Debian/Ubuntu: apt-get install -y {package})")
    })
}

/// Every (tool, package) of `tools`, as [`require`].
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        require(tool, package);
    }
}

/// Panics unless the test runs as root; `why` says what needs it ("run daemons").
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "these tests {why}: run them as root");
}
