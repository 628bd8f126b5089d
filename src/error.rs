//! The one public error of raidcore: a small stable kind for control flow, a one-line message
//! for people, and the underlying cause.
//!
//! `kind` maps to the errno NBD and FUSE clients see in exactly one place ([`Error::errno`]).
//! `raidctl` exits 1 on any error and 2 on a usage error that clap reports, as the README
//! says; the kind is for programs using the library. Messages name the thing that is wrong
//! and, where there is one, the fix.

use std::fmt;
use std::io;

use crate::layout::LayoutError;
use crate::metadata::MetadataError;

#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A member or system I/O failure.
    Io,
    /// Bad argument, geometry or request.
    InvalidInput,
    /// A device or array is held by someone else.
    Busy,
    /// No superblock, no such array or device.
    NotFound,
    /// Metadata that fails validation (checksum, magic, impossible values).
    Corrupt,
    /// Members disagree (foreign, stale, mismatched geometry).
    Inconsistent,
    /// Valid but not supported (RAID6, reshape).
    Unsupported,
    /// Beyond the end of the array.
    OutOfRange,
    /// A write to a read-only array.
    ReadOnly,
    /// Too many members lost: the data is not all there.
    ArrayFailed,
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error with what we were doing: "reading superblock of /dev/x: Input/output error".
    pub fn io(context: impl fmt::Display, source: io::Error) -> Error {
        let kind = match source.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::ResourceBusy => ErrorKind::Busy,
            io::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
            io::ErrorKind::PermissionDenied => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            message: format!("{context}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// A metadata structure that cannot be used, with what we were doing: its kind says
    /// whether it is damaged, unsupported or an impossible request.
    pub fn metadata(context: impl fmt::Display, source: MetadataError) -> Error {
        let mut e = Error::from(source);
        e.message = format!("{context}: {}", e.message);
        e
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidInput, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The errno an NBD client should see for this error.
    pub fn errno(&self) -> i32 {
        match self.kind {
            ErrorKind::InvalidInput => libc::EINVAL,
            ErrorKind::OutOfRange => libc::ENOSPC,
            ErrorKind::ReadOnly => libc::EPERM,
            ErrorKind::Unsupported => libc::ENOTSUP,
            _ => libc::EIO,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        // Member errors already carry their path in the message.
        let message = e.to_string();
        let kind = if e.kind() == io::ErrorKind::ResourceBusy {
            ErrorKind::Busy
        } else {
            ErrorKind::Io
        };
        Error {
            kind,
            message,
            source: Some(Box::new(e)),
        }
    }
}

impl From<MetadataError> for Error {
    fn from(e: MetadataError) -> Error {
        use MetadataError as M;
        let kind = match &e {
            M::BadMagic { .. } | M::BitmapBadMagic { .. } => ErrorKind::NotFound,
            M::BadMajorVersion(_)
            | M::UnknownFeatures { .. }
            | M::BitmapBadVersion(_)
            | M::ExtensionBadVersion(_) => ErrorKind::Unsupported,
            // What a create or a role change asked for that md's format cannot hold.
            M::BadName(_)
            | M::DeviceTooSmall { .. }
            | M::DataSizeTooSmall(_)
            | M::TooManyDevices(_)
            | M::DevNumberOutOfRange(_)
            | M::SlotOutOfRange(_)
            | M::NoBitmapForLevel(_)
            | M::BitmapTooLarge { .. }
            | M::BitOutOfRange { .. } => ErrorKind::InvalidInput,
            _ => ErrorKind::Corrupt,
        };
        Error {
            kind,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<LayoutError> for Error {
    fn from(e: LayoutError) -> Error {
        let kind = match &e {
            LayoutError::Unsupported(_) => ErrorKind::Unsupported,
            _ => ErrorKind::InvalidInput,
        };
        Error {
            kind,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}
