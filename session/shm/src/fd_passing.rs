//! Bytes plus file descriptors over a Unix stream socket (`SCM_RIGHTS`).
//!
//! The app socket hands segments (memfds) and eventfds from the stack to an
//! app process this way. Built on rustix's safe `sendmsg`/`recvmsg`, so this
//! module needs no `unsafe`.
//!
//! # How fds ride a byte stream
//!
//! A stream socket has no message boundaries, but the kernel pins the fds
//! of one `sendmsg` to the first byte that call sent, and hands them to the
//! `recvmsg` that reads that byte (possibly together with bytes sent
//! before it, never with the fds of another `sendmsg`). So:
//!
//! - [`send_with_fds`] sends the fds with the first bytes of the buffer,
//!   [`MAX_FDS`] per `sendmsg`. More fds than that are sent in groups, each
//!   group with the next bytes of the buffer, which must therefore have at
//!   least one byte per group.
//! - [`recv_with_fds`] appends whatever fds arrive to the caller's list, in
//!   order. Callers that frame messages on top (the app socket protocol of
//!   `hoststack-app-proto`) keep one FIFO of received fds and take each
//!   message's fds from its front once the message is complete: the fds are
//!   always there by then.
//!
//! Received fds are close-on-exec (`MSG_CMSG_CLOEXEC`). A peer that sends
//! more than [`MAX_FDS`] fds in one `sendmsg` overflows the control buffer;
//! the kernel then closes the excess and [`recv_with_fds`] reports
//! `Corrupted` (close the connection: the stream is no longer in step).
//!
//! # Blocking
//!
//! Both calls work on blocking and non-blocking sockets. [`send_with_fds`]
//! always sends the whole buffer: on a non-blocking socket whose send
//! buffer is full it waits (poll) for room, at most [`SEND_TIMEOUT`] in
//! all. [`recv_with_fds`] on a non-blocking socket with nothing to read
//! returns `ShmError::Os` with kind `WouldBlock`. Sends use
//! `MSG_NOSIGNAL`: a peer that went away gives `Os` with kind `BrokenPipe`,
//! not a SIGPIPE.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};

use crate::error::{ShmError, ShmResult};

/// Most fds sent with one `sendmsg`, and most accepted by one
/// [`recv_with_fds`].
pub const MAX_FDS: usize = 8;

/// Longest [`send_with_fds`] waits for room in a full socket buffer.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Control-message space for [`MAX_FDS`] fds.
const CONTROL_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));

fn os(context: &'static str, errno: Errno) -> ShmError {
    ShmError::os(context, &std::io::Error::from(errno))
}

/// Sends all of `buf` on `stream`, with `fds` attached to its first bytes.
///
/// Up to [`MAX_FDS`] fds go with the first `sendmsg`; more go in groups of
/// [`MAX_FDS`] with the following bytes, so `buf` needs at least
/// `fds.len().div_ceil(MAX_FDS)` bytes (else `InvalidValue`, nothing sent).
/// Partial writes are continued. An empty `buf` with no fds sends nothing.
///
/// Errors: `Os` from the socket (`BrokenPipe` when the peer is gone,
/// `TimedOut` after waiting [`SEND_TIMEOUT`] for room). After an error
/// part of the buffer may have been sent: close the connection.
pub fn send_with_fds(stream: &UnixStream, buf: &[u8], fds: &[BorrowedFd<'_>]) -> ShmResult<()> {
    let groups = fds.len().div_ceil(MAX_FDS);
    if groups > buf.len() {
        return Err(ShmError::InvalidValue(format!(
            "{} fds need at least {groups} bytes to ride on, got {}",
            fds.len(),
            buf.len()
        )));
    }
    let deadline = Instant::now() + SEND_TIMEOUT;
    let mut sent = 0;
    for (i, group) in fds.chunks(MAX_FDS).enumerate() {
        // Leave one byte for each later group.
        let later_groups = groups - i - 1;
        let chunk = &buf[sent..buf.len() - later_groups];
        sent += send_once(stream, chunk, group, deadline)?;
    }
    while sent < buf.len() {
        sent += send_once(stream, &buf[sent..], &[], deadline)?;
    }
    Ok(())
}

/// One successful `sendmsg` of a non-empty prefix of `chunk` (with `fds`,
/// which go as soon as one byte does); returns the bytes sent.
fn send_once(
    stream: &UnixStream,
    chunk: &[u8],
    fds: &[BorrowedFd<'_>],
    deadline: Instant,
) -> ShmResult<usize> {
    debug_assert!(!chunk.is_empty() && fds.len() <= MAX_FDS);
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    loop {
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(ShmError::InvalidValue(format!(
                "{} fds do not fit a control message",
                fds.len()
            )));
        }
        match sendmsg(
            stream,
            &[IoSlice::new(chunk)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(0) => {
                return Err(os("send_with_fds: socket accepted nothing", Errno::PIPE));
            }
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait_writable(stream, deadline)?,
            Err(e) => return Err(os("send_with_fds", e)),
        }
    }
}

/// Waits until `stream` has room (or an error to report) or `deadline`
/// passes (`Os` with kind `TimedOut`).
fn wait_writable(stream: &UnixStream, deadline: Instant) -> ShmResult<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(os("send_with_fds: peer is not reading", Errno::TIMEDOUT));
        }
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut pollfd = [PollFd::new(stream, PollFlags::OUT)];
        match poll(&mut pollfd, Some(&timeout)) {
            // Ready for writing, or an error the next sendmsg will report.
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(os("send_with_fds: poll", e)),
        }
    }
}

/// Reads up to `buf.len()` bytes from `stream`, appending the fds that
/// came with them to `fds` (close-on-exec, in the order sent). Returns the
/// bytes read; 0 means the peer closed its end.
///
/// Errors: `InvalidValue` for an empty `buf` (a 0 return would look like a
/// closed peer); `Corrupted` when the peer sent more than [`MAX_FDS`] fds
/// at once (the fds of that read are closed; close the connection); `Os`
/// from the socket (`WouldBlock` on an empty non-blocking socket).
pub fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> ShmResult<usize> {
    if buf.is_empty() {
        return Err(ShmError::InvalidValue(
            "recv_with_fds needs a non-empty buffer".into(),
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); CONTROL_SPACE];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let result = recvmsg(
            stream,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        match result {
            Ok(msg) => {
                let mut received = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = message {
                        received.extend(rights);
                    }
                }
                if msg.flags.contains(ReturnFlags::CTRUNC) {
                    // `received` is dropped here, closing what did arrive.
                    return Err(ShmError::Corrupted(format!(
                        "control data truncated: peer sent more than {MAX_FDS} fds at once"
                    )));
                }
                fds.extend(received);
                return Ok(msg.bytes);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(os("recv_with_fds", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventfd::EventFd;
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    fn memfd_with(content: &str) -> File {
        let mut file = memfd::MemfdOptions::new()
            .close_on_exec(true)
            .create("hs-fd-passing-test")
            .unwrap()
            .into_file();
        file.write_all(content.as_bytes()).unwrap();
        file
    }

    fn content_of(fd: OwnedFd) -> String {
        let file = File::from(fd);
        let mut buf = vec![0; 64];
        let n = file.read_at(&mut buf, 0).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// Reads until `want` bytes arrived, collecting every fd.
    fn recv_exact(stream: &UnixStream, want: usize) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut data = Vec::new();
        let mut fds = Vec::new();
        let mut buf = vec![0; 4096];
        while data.len() < want {
            let n = recv_with_fds(stream, &mut buf, &mut fds).unwrap();
            assert_ne!(n, 0, "peer closed early");
            data.extend_from_slice(&buf[..n]);
        }
        (data, fds)
    }

    #[test]
    fn an_eventfd_arrives_usable_and_cloexec() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new().unwrap();
        send_with_fds(&a, b"efd", &[efd.as_fd()]).unwrap();
        let (data, mut fds) = recv_exact(&b, 3);
        assert_eq!(data, b"efd");
        assert_eq!(fds.len(), 1);
        let fd = fds.pop().unwrap();
        let flags = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        let received = EventFd::from_owned_fd(fd).unwrap();
        received.notify().unwrap();
        assert_eq!(efd.drain().unwrap(), 1);
    }

    #[test]
    fn a_memfd_arrives_with_its_contents() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = memfd_with("segment bytes");
        send_with_fds(&a, &[1, 2, 3, 4], &[file.as_fd()]).unwrap();
        let (data, mut fds) = recv_exact(&b, 4);
        assert_eq!(data, [1, 2, 3, 4]);
        assert_eq!(content_of(fds.pop().unwrap()), "segment bytes");
    }

    #[test]
    fn bytes_without_fds_pass_through() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"plain", &[]).unwrap();
        send_with_fds(&a, b"", &[]).unwrap();
        let (data, fds) = recv_exact(&b, 5);
        assert_eq!(data, b"plain");
        assert!(fds.is_empty());
    }

    #[test]
    fn several_messages_keep_their_fds_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<File> = (0..6).map(|i| memfd_with(&format!("file {i}"))).collect();
        let mut total = 0;
        for (msg, range) in [(0u8, 0..1), (1, 1..1), (2, 1..4), (3, 4..6)] {
            let fds: Vec<BorrowedFd<'_>> = files[range].iter().map(AsFd::as_fd).collect();
            let bytes = vec![msg; 10];
            send_with_fds(&a, &bytes, &fds).unwrap();
            total += bytes.len();
        }
        let (data, fds) = recv_exact(&b, total);
        assert_eq!(data.len(), 40);
        for (msg, chunk) in data.chunks(10).enumerate() {
            assert!(chunk.iter().all(|&x| usize::from(x) == msg));
        }
        let contents: Vec<String> = fds.into_iter().map(content_of).collect();
        let expected: Vec<String> = (0..6).map(|i| format!("file {i}")).collect();
        assert_eq!(contents, expected);
    }

    #[test]
    fn more_than_max_fds_go_in_groups_and_arrive_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let files: Vec<File> = (0..20).map(|i| memfd_with(&i.to_string())).collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(AsFd::as_fd).collect();
        send_with_fds(&a, &[9; 100], &fds).unwrap();
        let (data, got) = recv_exact(&b, 100);
        assert_eq!(data, [9; 100]);
        let contents: Vec<String> = got.into_iter().map(content_of).collect();
        let expected: Vec<String> = (0..20).map(|i: i32| i.to_string()).collect();
        assert_eq!(contents, expected);
    }

    #[test]
    fn fds_without_enough_bytes_to_ride_on_are_refused() {
        let (a, _b) = UnixStream::pair().unwrap();
        let efd = EventFd::new().unwrap();
        assert!(matches!(
            send_with_fds(&a, b"", &[efd.as_fd()]),
            Err(ShmError::InvalidValue(_))
        ));
        let fds = vec![efd.as_fd(); MAX_FDS + 1];
        assert!(matches!(
            send_with_fds(&a, b"x", &fds),
            Err(ShmError::InvalidValue(_))
        ));
        assert!(send_with_fds(&a, b"xy", &fds).is_ok());
    }

    #[test]
    fn a_large_send_on_a_nonblocking_socket_completes_with_its_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let payload: Vec<u8> = (0..4 << 20).map(|i: u32| i as u8).collect();
        let expected = payload.clone();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            recv_exact(&b, 4 << 20)
        });
        let first = memfd_with("first");
        let second = memfd_with("second");
        send_with_fds(&a, &payload, &[first.as_fd(), second.as_fd()]).unwrap();
        let (data, fds) = reader.join().unwrap();
        assert!(data == expected, "payload differs");
        let contents: Vec<String> = fds.into_iter().map(content_of).collect();
        assert_eq!(contents, ["first", "second"]);
    }

    #[test]
    fn a_closed_peer_reads_as_zero_and_fails_sends() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"bye", &[]).unwrap();
        drop(a);
        let mut buf = [0; 16];
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 3);
        assert_eq!(recv_with_fds(&b, &mut buf, &mut fds).unwrap(), 0);
        let err = send_with_fds(&b, b"anyone?", &[]).unwrap_err();
        assert!(matches!(
            err,
            ShmError::Os {
                kind: std::io::ErrorKind::BrokenPipe,
                ..
            }
        ));
    }

    #[test]
    fn an_empty_nonblocking_socket_would_block_and_an_empty_buffer_is_invalid() {
        let (_a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut fds = Vec::new();
        assert!(matches!(
            recv_with_fds(&b, &mut [0; 8], &mut fds),
            Err(ShmError::Os {
                kind: std::io::ErrorKind::WouldBlock,
                ..
            })
        ));
        assert!(matches!(
            recv_with_fds(&b, &mut [], &mut fds),
            Err(ShmError::InvalidValue(_))
        ));
    }

    #[test]
    fn too_many_fds_in_one_sendmsg_is_corrupted() {
        let (a, b) = UnixStream::pair().unwrap();
        let efd = EventFd::new().unwrap();
        let fds = vec![efd.as_fd(); MAX_FDS + 4];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(12))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        sendmsg(&a, &[IoSlice::new(b"x")], &mut control, SendFlags::NOSIGNAL).unwrap();
        let mut got = Vec::new();
        assert!(matches!(
            recv_with_fds(&b, &mut [0; 8], &mut got),
            Err(ShmError::Corrupted(_))
        ));
        assert!(got.is_empty());
    }
}
