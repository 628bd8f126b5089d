//! A FUSE filesystem that shows one array as one regular file, for a loop device to attach
//! where the kernel has no nbd driver.
//!
//! ```text
//!  mount dir/            (inode 1)
//!   └── NAME             (inode 2, size = array size, opened with FOPEN_DIRECT_IO)
//! ```
//!
//! Reads and writes go to the engine in the daemon's process through an [`EngineHandle`]: the
//! FUSE thread posts each request to the array's reactor and returns at once; the reply is
//! sent from the reactor when the engine completes it, so many requests are in flight.
//! fsync is a FLUSH; fallocate PUNCH_HOLE is a TRIM and ZERO_RANGE a WRITE_ZEROES. Requests not
//! aligned to 512 bytes (rare: loop devices align) are widened to whole sectors; an unaligned
//! write becomes a read-modify-write of its edge sectors.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    INodeNo, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, WriteFlags,
};
use raidcore::buf::BufSlice;
use raidcore::cache::EngineHandle;

const ROOT: INodeNo = INodeNo::ROOT;
const FILE: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);
const SECTOR: u64 = 512;
/// Large requests: fewer round trips through /dev/fuse.
const MAX_WRITE: u32 = 1 << 20;

/// The filesystem: one file named after the array.
pub struct ArrayFs {
    handle: EngineHandle,
    name: String,
    created: SystemTime,
}

/// Mounts the array's file under `dir` (which must exist). Unmounted when the session is dropped.
pub fn mount(handle: EngineHandle, name: &str, dir: &Path) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("raidctl:{name}")),
        MountOption::Subtype("raidctl".into()),
        MountOption::DefaultPermissions,
        if handle.is_read_only() {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = SessionACL::RootAndOwner;
    config.n_threads = Some(2);
    config.clone_fd = true;
    let fs = ArrayFs {
        handle,
        name: name.to_string(),
        created: SystemTime::now(),
    };
    fuser::spawn_mount(fs, dir, &config)
}

impl ArrayFs {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 2)
        } else {
            (
                FileType::RegularFile,
                if self.handle.is_read_only() {
                    0o400
                } else {
                    0o600
                },
                self.handle.size_bytes(),
                1,
            )
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(SECTOR),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The byte range clipped to the file, or an error for a start past the end.
    fn clip(&self, offset: u64, len: u64) -> (u64, u64) {
        let size = self.handle.size_bytes();
        let end = offset.saturating_add(len).min(size);
        (offset.min(size), end.saturating_sub(offset.min(size)))
    }
}

fn errno_of(e: &raidcore::Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for ArrayFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        // The loop device submits asynchronous direct I/O: without ASYNC_DIO the kernel would
        // serve it one request at a time. Let many be in flight (our replies are async).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == OsStr::new(&self.name) {
            reply.entry(&TTL, &self.attr(FILE), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == ROOT || ino == FILE {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // The array has the size it has: truncating to it is fine, anything else is not.
        match size {
            Some(s) if s != self.handle.size_bytes() => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &self.attr(ino)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if writing && self.handle.is_read_only() {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (offset, len) = self.clip(offset, size as u64);
        if len == 0 {
            return reply.data(&[]);
        }
        let start = offset / SECTOR * SECTOR;
        let end = (offset + len).div_ceil(SECTOR) * SECTOR;
        let skip = (offset - start) as usize;
        self.handle
            .read(start, (end - start) as usize, move |r| match r {
                Ok(buf) => reply.data(&buf.bytes()[skip..skip + len as usize]),
                Err(e) => reply.error(errno_of(&e)),
            });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (offset, len) = self.clip(offset, data.len() as u64);
        if len < data.len() as u64 {
            return reply.error(Errno::ENOSPC);
        }
        if len == 0 {
            return reply.written(0);
        }
        let fua = flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0;
        let written = len as u32;
        if offset % SECTOR == 0 && len % SECTOR == 0 {
            let buf = BufSlice::copy_of(data);
            self.handle.write(offset, buf, fua, move |r| match r {
                Ok(()) => reply.written(written),
                Err(e) => reply.error(errno_of(&e)),
            });
            return;
        }
        // Unaligned: the engine side reads the covering sectors, patches and writes them back
        // with those blocks locked (two such writes on one sector must not lose one).
        self.handle
            .write_unaligned(offset, data.to_vec(), fua, move |r| match r {
                Ok(()) => reply.written(written),
                Err(e) => reply.error(errno_of(&e)),
            });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability point; fsync is.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.handle.flush(move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, self.name.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.handle.size_bytes() / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (offset, len) = self.clip(offset, length);
        let done = move |r: raidcore::Result<()>| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno_of(&e)),
        };
        // Only whole sectors can be zeroed; edges of an unaligned range are left as they are
        // for a punch (a hint) and refused for a zero-range (a promise).
        let start = offset.div_ceil(SECTOR) * SECTOR;
        let end = (offset + len) / SECTOR * SECTOR;
        let aligned = start == offset && end == offset + len;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            if end > start {
                self.handle.trim(start, end - start, done);
            } else {
                done(Ok(()));
            }
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            if !aligned {
                return done(Err(raidcore::Error::invalid(
                    "ZERO_RANGE must be 512-byte aligned",
                )));
            }
            self.handle.write_zeroes(start, end - start, done);
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            // Plain allocation inside the array: every byte is already backed.
            if offset.saturating_add(length) > self.handle.size_bytes()
                && mode & libc::FALLOC_FL_KEEP_SIZE == 0
            {
                done(Err(raidcore::Error::new(
                    raidcore::ErrorKind::OutOfRange,
                    "the array cannot grow",
                )));
            } else {
                done(Ok(()));
            }
        } else {
            done(Err(raidcore::Error::new(
                raidcore::ErrorKind::Unsupported,
                "fallocate mode not supported",
            )));
        }
    }
}
