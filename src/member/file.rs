//! A member backed by a regular file, loop device or block device, driven by io_uring.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::{opcode, types};

use super::claim::{claim_path, holder_of, in_use, Claim};
use super::{LocalFuture, Member};
use crate::buf::{AlignedBuf, BufSlice};
use crate::reactor::submit;

/// How to open a member.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Open read-only (examine, read-only assemble).
    pub read_only: bool,
    /// Skip the exclusive claim (examine looks at devices a running array holds).
    pub no_claim: bool,
}

/// A file or block device with its io_uring-facing descriptor.
pub struct FileMember {
    path: String,
    file: File,
    size_bytes: u64,
    direct: bool,
    block_device: bool,
    /// On a filesystem that lives in memory (tmpfs, ramfs): I/O is a copy to or from the page
    /// cache that never waits for a device, done inline (see `rw`).
    in_memory: bool,
    /// Set when a write, discard or zeroing completes, cleared when a flush starts: a FLUSH
    /// with nothing written since the last one costs no fdatasync.
    unflushed: std::cell::Cell<bool>,
    /// fdatasyncs issued (for tests and counters).
    syncs: std::cell::Cell<u64>,
    _claim: Option<Claim>,
}

/// Logged once per process: which members fell back to buffered I/O.
static BUFFERED_NOTICE: AtomicBool = AtomicBool::new(false);

impl FileMember {
    /// Opens and claims `path`. Regular files and block devices only.
    pub fn open(path: &str, opts: OpenOptions) -> io::Result<FileMember> {
        let meta = std::fs::metadata(path).map_err(|e| annotate(path, e))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is not a regular file or block device"),
            ));
        }
        let (file, direct) = open_file(path, opts.read_only, block_device && !opts.no_claim)?;
        let size_bytes = if block_device {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        let claim = if opts.no_claim {
            None
        } else {
            Some(claim_path(path, &file)?)
        };
        if !direct && !BUFFERED_NOTICE.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{path}: O_DIRECT is not supported here; using buffered I/O (flushes still reach stable storage)"
            );
        }
        let in_memory = !block_device && on_memory_filesystem(&file);
        Ok(FileMember {
            path: path.to_string(),
            file,
            size_bytes,
            direct,
            block_device,
            in_memory,
            unflushed: std::cell::Cell::new(true),
            syncs: std::cell::Cell::new(0),
            _claim: claim,
        })
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// How many fdatasyncs `flush` has issued.
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Makes everything written so far durable: one fdatasync (data, and the metadata needed
    /// to read it back; all a member file needs), and none when nothing was written since the
    /// last flush began. A write that completes while the sync runs marks the member again.
    async fn sync_data(&self) -> io::Result<()> {
        if !self.unflushed.replace(false) {
            return Ok(());
        }
        self.syncs.set(self.syncs.get() + 1);
        let entry = opcode::Fsync::new(self.fd())
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        let res = submit(entry, None).await;
        if res < 0 {
            self.unflushed.set(true);
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(())
    }

    /// `result` of a write-like operation; a success marks the member as having unflushed
    /// data.
    fn wrote<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if result.is_ok() {
            self.unflushed.set(true);
        }
        result
    }

    /// Synchronous read for the control plane (assembly, examine). `buf` must be aligned.
    pub fn read_exact_at(&self, buf: &mut AlignedBuf, offset: u64) -> io::Result<()> {
        self.file
            .read_exact_at(buf.as_mut_slice(), offset)
            .map_err(|e| annotate(&self.path, e))
    }

    /// Synchronous write for the control plane (create).
    pub fn write_all_at(&self, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
        let result = self.file.write_all_at(buf.as_slice(), offset);
        self.wrote(result).map_err(|e| annotate(&self.path, e))
    }

    /// Synchronous fsync for the control plane.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all().map_err(|e| annotate(&self.path, e))
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    async fn rw(&self, offset: u64, buf: BufSlice, write: bool, fua: bool) -> io::Result<()> {
        if self.in_memory {
            return self.rw_inline(offset, &buf, write);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let part = buf.slice(done, buf.len() - done);
            let at = offset + done as u64;
            let entry = if write {
                let flags = if fua { libc::RWF_DSYNC } else { 0 };
                opcode::Write::new(self.fd(), part.as_ptr(), part.len() as u32)
                    .offset(at)
                    .rw_flags(flags)
                    .build()
            } else {
                opcode::Read::new(self.fd(), part.as_mut_ptr(), part.len() as u32)
                    .offset(at)
                    .build()
            };
            let res = submit(entry, Some(Box::new(part))).await;
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            if res == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: I/O at {at} past the end of the device", self.path),
                ));
            }
            done += res as usize;
        }
        Ok(())
    }

    /// `rw` for a member in memory. io_uring cannot do tmpfs I/O without blocking, so it hands
    /// every such request to a kernel worker thread and back (a wakeup and an interrupt each
    /// way, measured at more CPU than the copy itself); a plain pread/pwrite does the same copy
    /// here. (A tmpfs page that was swapped out makes this wait for the swap device.)
    fn rw_inline(&self, offset: u64, buf: &BufSlice, write: bool) -> io::Result<()> {
        let result = if write {
            self.file.write_all_at(buf.bytes(), offset)
        } else {
            // SAFETY: the buffer is the caller's, not in any other I/O (the BufSlice contract).
            let dst = unsafe { buf.bytes_mut() };
            self.file.read_exact_at(dst, offset)
        };
        result.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: I/O at {offset} past the end of the device", self.path),
            ),
            _ => e,
        })
    }

    async fn fallocate(&self, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let entry = opcode::Fallocate::new(self.fd(), len)
            .offset(offset)
            .mode(mode)
            .build();
        let res = submit(entry, None).await;
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(())
    }

    async fn zero_by_writing(&self, offset: u64, len: u64) -> io::Result<()> {
        const STEP: u64 = 1 << 20;
        let zeros = BufSlice::zeroed(STEP.min(len) as usize);
        let mut done = 0;
        while done < len {
            let n = STEP.min(len - done);
            self.rw(offset + done, zeros.slice(0, n as usize), true, false)
                .await?;
            done += n;
        }
        Ok(())
    }

    async fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let keep = if self.block_device {
            0
        } else {
            libc::FALLOC_FL_KEEP_SIZE
        };
        match self
            .fallocate(offset, len, libc::FALLOC_FL_ZERO_RANGE | keep)
            .await
        {
            Err(e) if unsupported(&e) => self.zero_by_writing(offset, len).await,
            other => other,
        }
    }

    async fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(offset, len, mode).await {
            Err(e) if unsupported(&e) => self.zero_range(offset, len).await,
            other => other,
        }
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOTTY)
    )
}

impl Member for FileMember {
    fn path(&self) -> &str {
        &self.path
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn read(&self, offset: u64, buf: BufSlice) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(self.rw(offset, buf, false, false))
    }
    fn write(&self, offset: u64, buf: BufSlice, fua: bool) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move { self.wrote(self.rw(offset, buf, true, fua).await) })
    }
    fn flush(&self) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(self.sync_data())
    }
    fn discard(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move { self.wrote(self.punch(offset, len).await) })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> LocalFuture<'_, io::Result<()>> {
        Box::pin(async move { self.wrote(self.zero_range(offset, len).await) })
    }
}

/// Opens with O_DIRECT when the filesystem takes it and 512-byte I/O works; else buffered.
fn open_file(path: &str, read_only: bool, exclusive: bool) -> io::Result<(File, bool)> {
    let open = |direct: bool| {
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        if exclusive {
            flags |= libc::O_EXCL;
        }
        std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
    };
    match open(true) {
        Ok(file) if direct_io_works(&file) => Ok((file, true)),
        Ok(_) => Ok((open(false).map_err(|e| open_error(path, e))?, false)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok((open(false).map_err(|e| open_error(path, e))?, false))
        }
        Err(e) => Err(open_error(path, e)),
    }
}

/// Our requests are 512-byte aligned; a 4Kn device would refuse them with O_DIRECT.
fn direct_io_works(file: &File) -> bool {
    let buf = AlignedBuf::zeroed(512);
    // SAFETY: reads at most 512 bytes into a live, 512-byte, 4096-aligned buffer we own.
    let rc = unsafe {
        libc::pread(
            file.as_raw_fd(),
            buf.as_slice().as_ptr() as *mut libc::c_void,
            512,
            512,
        )
    };
    rc >= 0
}

/// Whether `file` is on tmpfs or ramfs, whose data is the page cache itself.
fn on_memory_filesystem(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: statfs is plain old data; all zeroes is a valid value of it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs fills the struct we own, from a live fd.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

fn open_error(path: &str, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EBUSY) {
        if let Ok(f) = File::open(path) {
            return in_use(path, &holder_of(&f));
        }
        return in_use(path, "another user (O_EXCL refused)");
    }
    annotate(path, e)
}

fn annotate(path: &str, e: io::Error) -> io::Error {
    if e.to_string().contains(path) {
        return e;
    }
    io::Error::new(e.kind(), format!("{path}: {e}"))
}

fn block_device_size(file: &File) -> io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into the live variable we pass.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::block_on;

    /// Goal: a member on tmpfs is recognised and its inline reads and writes land where
    /// io_uring's would; an access past the end is an error naming the member.
    #[test]
    fn a_member_on_tmpfs_does_its_io_inline_and_right() {
        let Ok(dir) = tempfile_in_shm() else {
            eprintln!("no /dev/shm here: skipped");
            return;
        };
        let path = format!("{dir}/m.img");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let member = FileMember::open(&path, OpenOptions::default()).unwrap();
        assert!(member.in_memory, "tmpfs not recognised");
        block_on(async move {
            let data = BufSlice::filled(8192, |b| {
                b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8)
            });
            member.write(4096, data.clone(), true).await.unwrap();
            let back = BufSlice::zeroed(8192);
            member.read(4096, back.clone()).await.unwrap();
            assert_eq!(back.bytes(), data.bytes());
            let past = member.read((1 << 20) - 4096, BufSlice::zeroed(8192)).await;
            let e = past.unwrap_err().to_string();
            assert!(e.contains("past the end") && e.contains("m.img"), "{e}");
            member.flush().await.unwrap();
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Goal: a FLUSH syncs a member only when something was written to it since the last
    /// flush began (fdatasync), and every write, discard or zeroing marks it again.
    #[test]
    fn flush_syncs_only_what_was_written_since() {
        let dir = std::env::temp_dir().join(format!("raidctl-flush-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.img").to_string_lossy().into_owned();
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let member = FileMember::open(&path, OpenOptions::default()).unwrap();
        block_on(async move {
            member.flush().await.unwrap();
            assert_eq!(member.syncs(), 1, "opened members are synced once");
            member.flush().await.unwrap();
            assert_eq!(member.syncs(), 1, "nothing written: no sync");
            member
                .write(0, BufSlice::zeroed(4096), false)
                .await
                .unwrap();
            member.flush().await.unwrap();
            assert_eq!(member.syncs(), 2);
            member.write_zeroes(8192, 4096).await.unwrap();
            member.flush().await.unwrap();
            member.discard(16384, 4096).await.unwrap();
            member.flush().await.unwrap();
            member.flush().await.unwrap();
            assert_eq!(member.syncs(), 4);
        })
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_in_shm() -> io::Result<String> {
        let dir = format!("/dev/shm/raidctl-test-{}", std::process::id());
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
