//! Compatibility with arrays made by Linux md itself.
//!
//! The fixtures (shared/fixtures/md, see its README) are member images of real md arrays, filled
//! through /dev/md0 with a checkable pattern: the 4 KiB block at array offset `o` holds
//! `"<TAG> <o as 16 digits>\n"` repeated and cut at 4096 bytes. raidcore must assemble them and
//! read back exactly md's bytes (block by block, then the md5 md recorded), refuse what md would
//! refuse, and leave arrays it wrote to in a state mdadm accepts.
//!
//! Fixture directory: `$RAIDCORE_MD_FIXTURES`, else `../shared/fixtures/md` beside the crate.
//! Needs `xz` (decompression) and `mdadm` (`--examine` after writes); a missing fixture
//! directory or tool fails the test, saying what is missing.

mod fixture;
mod pattern;
mod reads;
mod refusals;
mod writes;
