//! Fixed-newstyle handshake: greeting, option haggling, and the move to transmission.
//!
//! Every option we do not implement gets NBD_REP_ERR_UNSUP and the haggle goes on (qemu tries
//! EXTENDED_HEADERS first and must be able to fall back). Malformed option data gets
//! ERR_INVALID. What cannot be answered in-band (bad magic, unknown client flags, oversized
//! options, too many options, an unknown name with EXPORT_NAME) ends the connection.

use std::io;
use std::os::fd::RawFd;

use super::proto::*;
use super::sock::{read_exact, write_all};
use super::Export;
use crate::buf::{AlignedBuf, BufSlice};

/// What the client negotiated, for the transmission phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Negotiated {
    pub structured: bool,
    pub base_allocation: bool,
}

const MAX_OPTIONS: usize = 64;
const MAX_OPTION_BYTES: u32 = 64 << 10;

/// Runs the handshake. Ok(Some) enters transmission, Ok(None) is a polite end (ABORT).
pub async fn handshake(fd: RawFd, export: &Export) -> io::Result<Option<Negotiated>> {
    let client_flags = greet(fd).await?;
    let fixed = client_flags & CLIENT_FIXED_NEWSTYLE != 0;
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;
    let mut negotiated = Negotiated::default();

    for _ in 0..MAX_OPTIONS {
        let (option, data) = read_option(fd).await?;
        if option == OPT_EXPORT_NAME {
            return export_name(fd, export, &data, no_zeroes).await.map(Some);
        }
        if !fixed {
            // Plain newstyle clients may only use EXPORT_NAME.
            return Err(protocol_error(
                "non-fixed newstyle client sent an option".into(),
            ));
        }
        match answer_option(fd, export, option, &data, &mut negotiated).await? {
            Haggle::Next => {}
            Haggle::Abort => return Ok(None),
            Haggle::Transmit => return Ok(Some(negotiated)),
        }
    }
    Err(protocol_error(format!("more than {MAX_OPTIONS} options")))
}

/// Sends the fixed-newstyle greeting and returns the client's flags (refusing unknown ones).
async fn greet(fd: RawFd) -> io::Result<u32> {
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    send(fd, &greeting).await?;
    let client_flags = u32::from_be_bytes(recv(fd, 4).await?.try_into().expect("4 bytes"));
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(protocol_error(format!(
            "client sent unknown handshake flags {client_flags:#x}"
        )));
    }
    Ok(client_flags)
}

/// Reads one option: its number and data (bounded by MAX_OPTION_BYTES).
async fn read_option(fd: RawFd) -> io::Result<(u32, Vec<u8>)> {
    let header = recv(fd, 16).await?;
    if u64::from_be_bytes(header[0..8].try_into().expect("8 bytes")) != IHAVEOPT {
        return Err(protocol_error("bad option magic".into()));
    }
    let option = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    let length = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    if length > MAX_OPTION_BYTES {
        return Err(protocol_error(format!(
            "option {option} is {length} bytes long"
        )));
    }
    let data = recv(fd, length as usize).await?;
    Ok((option, data))
}

/// The old way in: EXPORT_NAME has no error reply, so an unknown name ends the connection;
/// otherwise the export is described and transmission starts with simple replies.
async fn export_name(
    fd: RawFd,
    export: &Export,
    data: &[u8],
    no_zeroes: bool,
) -> io::Result<Negotiated> {
    if !export.matches(&String::from_utf8_lossy(data)) {
        return Err(protocol_error(
            "unknown export requested with EXPORT_NAME".into(),
        ));
    }
    let mut reply = Vec::with_capacity(134);
    reply.extend_from_slice(&export.size_bytes().to_be_bytes());
    reply.extend_from_slice(&export.transmission_flags(false).to_be_bytes());
    if !no_zeroes {
        reply.extend_from_slice(&[0u8; 124]);
    }
    send(fd, &reply).await?;
    Ok(Negotiated {
        structured: false,
        base_allocation: false,
    })
}

/// Where the haggle goes after one option.
enum Haggle {
    /// Read the next option.
    Next,
    /// The client aborted (and was acknowledged).
    Abort,
    /// GO was accepted: enter transmission.
    Transmit,
}

/// Answers one fixed-newstyle option other than EXPORT_NAME.
async fn answer_option(
    fd: RawFd,
    export: &Export,
    option: u32,
    data: &[u8],
    negotiated: &mut Negotiated,
) -> io::Result<Haggle> {
    match option {
        OPT_ABORT => {
            let _ = send(fd, &option_reply(option, REP_ACK, &[])).await;
            return Ok(Haggle::Abort);
        }
        OPT_LIST => list(fd, export, option, data).await?,
        OPT_STRUCTURED_REPLY => {
            if !data.is_empty() {
                send(
                    fd,
                    &option_reply(option, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data"),
                )
                .await?;
                return Ok(Haggle::Next);
            }
            negotiated.structured = true;
            send(fd, &option_reply(option, REP_ACK, &[])).await?;
        }
        OPT_INFO | OPT_GO => {
            if info_or_go(fd, export, option, data, negotiated.structured).await?
                && option == OPT_GO
            {
                return Ok(Haggle::Transmit);
            }
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            meta_context(fd, export, option, data, negotiated).await?;
        }
        _ => {
            send(
                fd,
                &option_reply(option, REP_ERR_UNSUP, b"option not supported"),
            )
            .await?
        }
    }
    Ok(Haggle::Next)
}

/// Answers LIST with our one export.
async fn list(fd: RawFd, export: &Export, option: u32, data: &[u8]) -> io::Result<()> {
    if !data.is_empty() {
        return send(
            fd,
            &option_reply(option, REP_ERR_INVALID, b"LIST takes no data"),
        )
        .await;
    }
    let mut server = (export.name.len() as u32).to_be_bytes().to_vec();
    server.extend_from_slice(export.name.as_bytes());
    server.extend_from_slice(export.description.as_bytes());
    send(fd, &option_reply(option, REP_SERVER, &server)).await?;
    send(fd, &option_reply(option, REP_ACK, &[])).await
}

/// Answers INFO or GO. Returns true when the export was described (and, for GO, accepted).
async fn info_or_go(
    fd: RawFd,
    export: &Export,
    option: u32,
    data: &[u8],
    structured: bool,
) -> io::Result<bool> {
    let mut c = Cursor::new(data);
    let parsed = (|| {
        let name_len = c.u32()? as usize;
        let name = c.bytes(name_len)?;
        let count = c.u16()? as usize;
        let mut requests = Vec::with_capacity(count);
        for _ in 0..count {
            requests.push(c.u16()?);
        }
        c.is_empty()
            .then_some((String::from_utf8_lossy(name).into_owned(), requests))
    })();
    let Some((name, requests)) = parsed else {
        send(
            fd,
            &option_reply(option, REP_ERR_INVALID, b"malformed INFO/GO request"),
        )
        .await?;
        return Ok(false);
    };
    if !export.matches(&name) {
        let msg = format!(
            "no export named {name:?}; this server has {:?}",
            export.name
        );
        send(fd, &option_reply(option, REP_ERR_UNKNOWN, msg.as_bytes())).await?;
        return Ok(false);
    }
    let mut info = INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&export.size_bytes().to_be_bytes());
    info.extend_from_slice(&export.transmission_flags(structured).to_be_bytes());
    let mut out = option_reply(option, REP_INFO, &info);
    if requests.contains(&INFO_NAME) {
        let mut b = INFO_NAME.to_be_bytes().to_vec();
        b.extend_from_slice(export.name.as_bytes());
        out.extend(option_reply(option, REP_INFO, &b));
    }
    if requests.contains(&INFO_DESCRIPTION) {
        let mut b = INFO_DESCRIPTION.to_be_bytes().to_vec();
        b.extend_from_slice(export.description.as_bytes());
        out.extend(option_reply(option, REP_INFO, &b));
    }
    // Block sizes are always worth sending: a client that asked promises to honour them.
    let mut b = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    b.extend_from_slice(&export.min_block.to_be_bytes());
    b.extend_from_slice(&export.preferred_block.to_be_bytes());
    b.extend_from_slice(&export.max_payload.to_be_bytes());
    out.extend(option_reply(option, REP_INFO, &b));
    out.extend(option_reply(option, REP_ACK, &[]));
    send(fd, &out).await?;
    Ok(true)
}

async fn meta_context(
    fd: RawFd,
    export: &Export,
    option: u32,
    data: &[u8],
    negotiated: &mut Negotiated,
) -> io::Result<()> {
    let set = option == OPT_SET_META_CONTEXT;
    let mut c = Cursor::new(data);
    let parsed = (|| {
        let name_len = c.u32()? as usize;
        let name = String::from_utf8_lossy(c.bytes(name_len)?).into_owned();
        let count = c.u32()? as usize;
        let mut queries = Vec::new();
        for _ in 0..count.min(1024) {
            let len = c.u32()? as usize;
            queries.push(String::from_utf8_lossy(c.bytes(len)?).into_owned());
        }
        (c.is_empty() && count <= 1024).then_some((name, queries))
    })();
    let Some((name, queries)) = parsed else {
        return send(
            fd,
            &option_reply(option, REP_ERR_INVALID, b"malformed meta context request"),
        )
        .await;
    };
    if set && !negotiated.structured {
        negotiated.base_allocation = false;
        return send(
            fd,
            &option_reply(
                option,
                REP_ERR_INVALID,
                b"SET_META_CONTEXT needs structured replies first",
            ),
        )
        .await;
    }
    if !export.matches(&name) {
        return send(
            fd,
            &option_reply(option, REP_ERR_UNKNOWN, b"no such export"),
        )
        .await;
    }
    let wanted = if set {
        queries.iter().any(|q| q == META_BASE_ALLOCATION)
    } else {
        queries.is_empty()
            || queries
                .iter()
                .any(|q| q == META_BASE_ALLOCATION || q == "base:")
    };
    let mut out = Vec::new();
    if wanted {
        let id = if set { META_BASE_ALLOCATION_ID } else { 0 };
        let mut b = id.to_be_bytes().to_vec();
        b.extend_from_slice(META_BASE_ALLOCATION.as_bytes());
        out.extend(option_reply(option, REP_META_CONTEXT, &b));
    }
    if set {
        negotiated.base_allocation = wanted;
    }
    out.extend(option_reply(option, REP_ACK, &[]));
    send(fd, &out).await
}

async fn send(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    write_all(fd, &[AlignedBuf::from_slice(bytes).into_shared()]).await
}

async fn recv(fd: RawFd, len: usize) -> io::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let buf = BufSlice::zeroed(len);
    read_exact(fd, &buf).await?;
    Ok(buf.to_vec())
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
