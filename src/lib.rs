//! raidcore: a userspace RAID engine whose members carry Linux md v1.2 metadata.
//!
//! ```text
//!  frontends (NBD, FUSE, tests)          control plane
//!          │                             metadata  md v1.2 superblock, bitmap, assembly rules
//!          ▼                             create / assemble (control::create, control::assemble)
//!  raid::Array   engine: layout + parity + stripe locks + failure handling
//!          │
//!  member::Member  FileMember (io_uring, O_DIRECT) │ MemMember (simulated) │ FaultMember
//!          │
//!  reactor  one thread, one io_uring ring, async tasks
//! ```
//!
//! `layout` and `parity` are pure; everything that does I/O runs on a [`reactor`].

pub mod buf;
pub mod cache;
pub mod control;
pub mod daemon;
pub mod error;
pub mod fasthash;
pub mod inspect;
pub mod layout;
pub mod member;
pub mod metadata;
pub mod nbd;
pub mod parity;
pub mod raid;
pub mod reactor;
pub mod size;
pub mod volume;

pub use error::{Error, ErrorKind, Result};
