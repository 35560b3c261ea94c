//! The app socket's message format: what an external app process and the
//! stack say to each other over the Unix stream socket they share.
//!
//! The socket carries only the slow path (attach, detach, worker
//! registration) and the file descriptors that go with it; listen, connect
//! and io travel through shared-memory message queues afterwards
//! ([`crate::app_rx_queue`] one way, the worker event queues of
//! [`crate::app_event`] the other).
//!
//! # Frames
//!
//! Every message is one frame, all integers little endian:
//!
//! | bytes | field |
//! |-------|-------|
//! | 0..2  | magic `0x5348` ("HS") |
//! | 2     | version, [`WIRE_VERSION`] |
//! | 3     | kind (which request or reply) |
//! | 4..8  | request id |
//! | 8..12 | body length, at most [`MAX_BODY`] |
//! | 12..  | the body |
//!
//! Strings are a `u16` byte length then UTF-8; names and namespace ids are
//! at most [`MAX_NAME_LEN`] bytes, error details at most
//! [`MAX_DETAIL_LEN`]. Booleans are one byte, 0 or 1; anything else is an
//! error, as are unknown enum codes and bytes left over at the end of a
//! body.
//!
//! # Request ids
//!
//! The app numbers its requests from 1; a request with id 0 is rejected.
//! Every reply carries the id of the request it answers, except
//! [`AppReply::SegmentFd`], which is unsolicited and always has id 0, and
//! [`AppReply::Error`], which may have id 0 when it answers no request in
//! particular (the stack says why it is about to close the connection).
//!
//! # File descriptors
//!
//! Replies may carry fds (`SCM_RIGHTS`, see [`hoststack_shm::fd_passing`]); requests
//! never do. The sender attaches a reply's fds to the first bytes of its
//! frame, so they arrive no later than the frame's first byte, in order.
//! The receiver keeps every fd it gets in one FIFO and, for each reply it
//! decodes, takes [`AppReply::fd_count`] fds from the front:
//!
//! | reply | fds, in this order |
//! |-------|--------------------|
//! | `Attached` (to an attach or a join) | worker segment, event-queue eventfd (if `event_queue_eventfd`), rx-queues segment, one eventfd per rx queue (the last two only when there are rx queues) |
//! | `WorkerAdded` | worker segment, event-queue eventfd (if `event_queue_eventfd`) |
//! | `SegmentFd` | the segment |
//! | `Done`, `Error`, `ShareToken` | none |
//!
//! # Decoding untrusted bytes
//!
//! [`FrameReader`] takes bytes as they come off the socket and hands out
//! whole messages. A bad magic, an unknown version or kind, an oversized,
//! truncated or over-long body each give a typed error, never a panic; the
//! reader then stays failed and the connection should be closed. A body
//! length is checked against [`MAX_BODY`] before any of the body is
//! awaited, and every length read from a body is checked against the bytes
//! that are left before anything is allocated for it.

use crate::app_rx_queue::{MAX_THREADS, RxMessage, RxQueueInfo, RxQueuesInfo};
use crate::error::{ErrorCode, SessionError, SessionResult};
use crate::options::{AppOptions, SegmentKind};

/// First two bytes of every frame ("HS" read as a little-endian `u16`).
pub const WIRE_MAGIC: u16 = 0x5348;

/// The only version of the format this code speaks.
pub const WIRE_VERSION: u8 = 1;

/// Bytes of the frame header: magic, version, kind, request id, body length.
pub const FRAME_HEADER_LEN: usize = 12;

/// Largest body a frame may declare.
pub const MAX_BODY: usize = 64 << 10;

/// Longest app name or namespace id, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Longest error detail, in bytes; the encoder cuts longer ones.
pub const MAX_DETAIL_LEN: usize = 1024;

const KIND_ATTACH: u8 = 0x01;
const KIND_DETACH: u8 = 0x02;
const KIND_ADD_WORKER: u8 = 0x03;
const KIND_DEL_WORKER: u8 = 0x04;
const KIND_POST: u8 = 0x05;
const KIND_SHARE_TOKEN: u8 = 0x06;
const KIND_JOIN: u8 = 0x07;
const KIND_ATTACHED: u8 = 0x81;
const KIND_WORKER_ADDED: u8 = 0x82;
const KIND_DONE: u8 = 0x83;
const KIND_ERROR: u8 = 0x84;
const KIND_SEGMENT_FD: u8 = 0x85;
const KIND_TOKEN: u8 = 0x86;

const SEGMENT_KIND_MEMFD: u8 = 0;
const SEGMENT_KIND_PRIVATE: u8 = 1;

/// A message from an app to the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppRequest {
    /// Attach the app (once per connection); answered by
    /// [`AppReply::Attached`] or [`AppReply::Error`].
    Attach {
        /// The app's name, at most [`MAX_NAME_LEN`] bytes.
        name: String,
        /// Everything the app asks for; the namespace id is at most
        /// [`MAX_NAME_LEN`] bytes (empty: the default namespace). Decoding
        /// checks the structure only: [`AppOptions::validate`] is the
        /// attach path's business.
        options: AppOptions,
    },
    /// Detach the app and free everything it owns; answered by
    /// [`AppReply::Done`].
    Detach,
    /// Register one more worker; answered by [`AppReply::WorkerAdded`].
    AddWorker,
    /// Remove a worker; answered by [`AppReply::Done`].
    DelWorker {
        /// The worker's map index.
        worker: u32,
    },
    /// A message for stack thread `thread`, from an app the stack gave no
    /// private rx queues (what would otherwise go through the thread's rx
    /// queue); never answered. Control requests are answered on the app
    /// worker's event queue, as from a queue.
    Post {
        /// The stack thread (the main thread for control requests).
        thread: u32,
        /// The message.
        message: RxMessage,
    },
    /// Ask for the app's share token: the secret another connection (a
    /// forked child of this process) presents to [`AppRequest::Join`];
    /// answered by [`AppReply::ShareToken`].
    ShareToken,
    /// Join an attached app as one more worker owned by this connection
    /// (once per connection, instead of attaching): a forked child of an
    /// app process, which must not share its parent's connection. Answered
    /// by [`AppReply::Attached`] for the new worker, or `NoApp` for an
    /// unknown app or a wrong token.
    Join {
        /// The app's index.
        app: u32,
        /// Its share token.
        token: u64,
    },
}

impl AppRequest {
    /// An attach request for app `name` with `options`.
    pub fn attach(name: &str, options: &AppOptions) -> Self {
        Self::Attach {
            name: name.to_owned(),
            options: options.clone(),
        }
    }

    /// Checks what the decoder would refuse and the encoder would have to
    /// cut: `InvalidValue` for a name or namespace id over
    /// [`MAX_NAME_LEN`] bytes. Call it before [`encode_request`].
    pub fn validate(&self) -> SessionResult<()> {
        if let Self::Attach { name, options } = self {
            for (what, s) in [("app name", name), ("namespace id", &options.namespace_id)] {
                if s.len() > MAX_NAME_LEN {
                    return Err(SessionError::InvalidValue(format!(
                        "{what} of {} bytes exceeds {MAX_NAME_LEN}",
                        s.len()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Where a worker's first segment and event queue are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's map index (what [`AppRequest::DelWorker`] names).
    pub worker: u32,
    /// Index of its first segment (as later segment events name it).
    pub segment_index: u32,
    /// Bytes of that segment.
    pub segment_size: u64,
    /// Offset of the worker's event queue in that segment.
    pub event_queue_offset: u64,
    /// Slots of the event queue.
    pub event_queue_slots: u32,
    /// Payload bytes of one event-queue slot.
    pub event_queue_slot_size: u32,
    /// Whether the event queue signals an eventfd (which then travels with
    /// the reply, right after the segment).
    pub event_queue_eventfd: bool,
}

impl WorkerInfo {
    fn fd_count(&self) -> usize {
        1 + usize::from(self.event_queue_eventfd)
    }
}

/// What the app learns when it attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachInfo {
    /// The app's index.
    pub app: u32,
    /// Its first worker.
    pub worker: WorkerInfo,
    /// Stack threads, the main thread included; the main thread has the
    /// last index (`threads - 1`). At least 1, at most [`MAX_THREADS`].
    pub threads: u32,
    /// The app's rx queues (empty or one per thread).
    pub rx_queues: RxQueuesInfo,
}

/// A message from the stack to an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppReply {
    /// Attach succeeded.
    Attached(AttachInfo),
    /// A worker was added.
    WorkerAdded(WorkerInfo),
    /// Detach or worker removal succeeded.
    Done,
    /// The request failed.
    Error {
        /// An [`ErrorCode`] as `u32`, never 0 ([`ErrorCode::Ok`]).
        code: u32,
        /// Detail for [`ErrorCode::to_error`], at most [`MAX_DETAIL_LEN`]
        /// bytes.
        detail: String,
    },
    /// The app's share token (for [`AppRequest::Join`]).
    ShareToken {
        /// The token.
        token: u64,
    },
    /// A segment for one of the app's workers (unsolicited, request id 0).
    SegmentFd {
        /// The worker's map index.
        worker: u32,
        /// The segment's index.
        index: u32,
        /// Its size in bytes.
        size: u64,
    },
}

impl AppReply {
    /// How many fds travel with this reply (see the module doc for their
    /// order).
    pub fn fd_count(&self) -> usize {
        match self {
            Self::Attached(info) => {
                let rx = if info.rx_queues.queues.is_empty() {
                    0
                } else {
                    1 + info.rx_queues.queues.len()
                };
                info.worker.fd_count() + rx
            }
            Self::WorkerAdded(worker) => worker.fd_count(),
            Self::SegmentFd { .. } => 1,
            Self::Done | Self::Error { .. } | Self::ShareToken { .. } => 0,
        }
    }

    /// The error reply for `e`, with a detail from which
    /// [`AppReply::to_session_error`] rebuilds the same error for the
    /// typed variants (`NoApp`, `NotOwner`, ... carry their number).
    pub fn from_error(e: &SessionError) -> Self {
        let detail = match e {
            SessionError::InvalidValue(s)
            | SessionError::AlreadyAttached(s)
            | SessionError::UnsupportedConfig(s)
            | SessionError::InvalidNamespace(s)
            | SessionError::WrongNamespaceSecret(s)
            | SessionError::NoListener(s)
            | SessionError::InvalidRemoteIp(s)
            | SessionError::AlreadyListening(s)
            | SessionError::EndpointNotOnInterface(s)
            | SessionError::NoSpace(s)
            | SessionError::Corrupted(s)
            | SessionError::Transport(s) => s.clone(),
            SessionError::NoApp(n) | SessionError::InvalidAppWorker(n) => n.to_string(),
            SessionError::NotOwner(h) | SessionError::NoSession(h) => format!("{h:#x}"),
            SessionError::QueueFull => String::new(),
            other => other.to_string(),
        };
        Self::Error {
            code: ErrorCode::of(e) as u32,
            detail: truncated(&detail, MAX_DETAIL_LEN).to_owned(),
        }
    }

    /// For an [`AppReply::Error`], the error it stands for (through
    /// [`ErrorCode::to_error`]); `None` for every other reply.
    pub fn to_session_error(&self) -> Option<SessionError> {
        match self {
            Self::Error { code, detail } => ErrorCode::to_error(*code, detail.clone()),
            _ => None,
        }
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn frame(kind: u8, id: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&WIRE_MAGIC.to_le_bytes());
        buf.push(WIRE_VERSION);
        buf.push(kind);
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // body length, set in `finish`
        Self { buf }
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str, max: usize) {
        let s = truncated(s, max);
        // `max` is far below u16::MAX.
        self.buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// The namespace id and secret, then every other option.
    fn options(&mut self, o: &AppOptions) {
        self.string(&o.namespace_id, MAX_NAME_LEN);
        self.u64(o.namespace_secret);
        self.bool(o.scope_local);
        self.bool(o.scope_global);
        self.bool(o.proxy);
        // usize is at most 64 bits on every target hoststack builds for.
        self.u64(o.segment_size as u64);
        self.u64(o.add_segment_size as u64);
        self.u32(o.rx_fifo_size);
        self.u32(o.tx_fifo_size);
        self.u32(o.max_fifo_size);
        self.u32(o.prealloc_fifo_pairs);
        self.u32(o.prealloc_fifo_headers);
        self.u32(o.event_queue_size);
        self.bool(o.use_eventfd);
        self.u8(match o.segment_kind {
            SegmentKind::Memfd => SEGMENT_KIND_MEMFD,
            SegmentKind::Private => SEGMENT_KIND_PRIVATE,
        });
        self.u8(o.high_watermark);
        self.u8(o.low_watermark);
        self.u8(o.pct_first_alloc);
    }
    fn worker(&mut self, w: &WorkerInfo) {
        self.u32(w.worker);
        self.u32(w.segment_index);
        self.u64(w.segment_size);
        self.u64(w.event_queue_offset);
        self.u32(w.event_queue_slots);
        self.u32(w.event_queue_slot_size);
        self.bool(w.event_queue_eventfd);
    }
    fn finish(mut self) -> Vec<u8> {
        let body = self.buf.len() - FRAME_HEADER_LEN;
        debug_assert!(body <= MAX_BODY, "encoded body exceeds MAX_BODY");
        self.buf[8..12].copy_from_slice(&(body as u32).to_le_bytes());
        self.buf
    }
}

/// Encodes one request frame with request id `id` (use ids from 1 on).
///
/// Never fails: a name or namespace id over [`MAX_NAME_LEN`] bytes is cut
/// to that length; call [`AppRequest::validate`] first to refuse it
/// instead.
pub fn encode_request(id: u32, request: &AppRequest) -> Vec<u8> {
    match request {
        AppRequest::Attach { name, options } => {
            let mut w = Writer::frame(KIND_ATTACH, id);
            w.string(name, MAX_NAME_LEN);
            w.options(options);
            w.finish()
        }
        AppRequest::Detach => Writer::frame(KIND_DETACH, id).finish(),
        AppRequest::AddWorker => Writer::frame(KIND_ADD_WORKER, id).finish(),
        AppRequest::DelWorker { worker } => {
            let mut w = Writer::frame(KIND_DEL_WORKER, id);
            w.u32(*worker);
            w.finish()
        }
        AppRequest::Post { thread, message } => {
            let mut w = Writer::frame(KIND_POST, id);
            w.u32(*thread);
            w.buf.extend_from_slice(&message.encode());
            w.finish()
        }
        AppRequest::ShareToken => Writer::frame(KIND_SHARE_TOKEN, id).finish(),
        AppRequest::Join { app, token } => {
            let mut w = Writer::frame(KIND_JOIN, id);
            w.u32(*app);
            w.u64(*token);
            w.finish()
        }
    }
}

/// Encodes one reply frame answering request `id`.
///
/// [`AppReply::SegmentFd`] is always written with id 0, whatever `id` is.
/// An error detail over [`MAX_DETAIL_LEN`] bytes is cut to that length.
/// More than [`MAX_THREADS`] rx queues, or rx queues that do not match
/// `threads`, encode but are refused by the decoder.
pub fn encode_reply(id: u32, reply: &AppReply) -> Vec<u8> {
    match reply {
        AppReply::Attached(info) => {
            let mut w = Writer::frame(KIND_ATTACHED, id);
            w.u32(info.app);
            w.worker(&info.worker);
            w.u32(info.threads);
            w.u64(info.rx_queues.segment_size);
            let queues = &info.rx_queues.queues;
            let count = queues.len().min(MAX_THREADS as usize);
            w.u32(count as u32);
            for q in &queues[..count] {
                w.u64(q.offset);
            }
            w.finish()
        }
        AppReply::WorkerAdded(worker) => {
            let mut w = Writer::frame(KIND_WORKER_ADDED, id);
            w.worker(worker);
            w.finish()
        }
        AppReply::Done => Writer::frame(KIND_DONE, id).finish(),
        AppReply::ShareToken { token } => {
            let mut w = Writer::frame(KIND_TOKEN, id);
            w.u64(*token);
            w.finish()
        }
        AppReply::Error { code, detail } => {
            let mut w = Writer::frame(KIND_ERROR, id);
            w.u32(*code);
            w.string(detail, MAX_DETAIL_LEN);
            w.finish()
        }
        AppReply::SegmentFd {
            worker,
            index,
            size,
        } => {
            let mut w = Writer::frame(KIND_SEGMENT_FD, 0);
            w.u32(*worker);
            w.u32(*index);
            w.u64(*size);
            w.finish()
        }
    }
}

fn corrupted(what: impl std::fmt::Display) -> SessionError {
    SessionError::Corrupted(format!("app socket frame: {what}"))
}

/// A bounds-checked cursor over one frame body.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> SessionResult<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.body.len())
            .ok_or_else(|| corrupted("truncated body"))?;
        let b = &self.body[self.at..end];
        self.at = end;
        Ok(b)
    }
    fn array<const N: usize>(&mut self) -> SessionResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> SessionResult<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> SessionResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(corrupted(format_args!("boolean byte {v}"))),
        }
    }
    fn u16(&mut self) -> SessionResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> SessionResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> SessionResult<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self, what: &str, max: usize) -> SessionResult<String> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(SessionError::InvalidValue(format!(
                "{what} of {len} bytes exceeds {max}"
            )));
        }
        let bytes = self.bytes(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| corrupted(format_args!("{what} is not UTF-8")))
    }
    /// `InvalidValue` for a segment size this machine cannot address.
    fn options(&mut self) -> SessionResult<AppOptions> {
        let size = |what: &str, v: u64| {
            usize::try_from(v)
                .map_err(|_| SessionError::InvalidValue(format!("{what} {v} does not fit usize")))
        };
        Ok(AppOptions {
            namespace_id: self.string("namespace id", MAX_NAME_LEN)?,
            namespace_secret: self.u64()?,
            scope_local: self.bool()?,
            scope_global: self.bool()?,
            proxy: self.bool()?,
            segment_size: size("segment size", self.u64()?)?,
            add_segment_size: size("additional segment size", self.u64()?)?,
            rx_fifo_size: self.u32()?,
            tx_fifo_size: self.u32()?,
            max_fifo_size: self.u32()?,
            prealloc_fifo_pairs: self.u32()?,
            prealloc_fifo_headers: self.u32()?,
            event_queue_size: self.u32()?,
            use_eventfd: self.bool()?,
            segment_kind: match self.u8()? {
                SEGMENT_KIND_MEMFD => SegmentKind::Memfd,
                SEGMENT_KIND_PRIVATE => SegmentKind::Private,
                k => return Err(corrupted(format_args!("segment kind {k}"))),
            },
            high_watermark: self.u8()?,
            low_watermark: self.u8()?,
            pct_first_alloc: self.u8()?,
        })
    }
    fn worker(&mut self) -> SessionResult<WorkerInfo> {
        Ok(WorkerInfo {
            worker: self.u32()?,
            segment_index: self.u32()?,
            segment_size: self.u64()?,
            event_queue_offset: self.u64()?,
            event_queue_slots: self.u32()?,
            event_queue_slot_size: self.u32()?,
            event_queue_eventfd: self.bool()?,
        })
    }
    fn rx_queues(&mut self, threads: u32) -> SessionResult<RxQueuesInfo> {
        let segment_size = self.u64()?;
        let count = self.u32()?;
        if count != 0 && count != threads {
            return Err(corrupted(format_args!(
                "{count} rx queues for {threads} threads"
            )));
        }
        if (count == 0) != (segment_size == 0) {
            return Err(corrupted(format_args!(
                "{count} rx queues in a segment of {segment_size} bytes"
            )));
        }
        // `count <= MAX_THREADS` (through `threads`); also bound it by the
        // bytes left before allocating.
        let count = count as usize;
        if count * 8 > self.body.len() - self.at {
            return Err(corrupted("truncated body"));
        }
        let mut queues = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = self.u64()?;
            if offset >= segment_size {
                return Err(corrupted(format_args!(
                    "rx queue offset {offset} outside a segment of {segment_size} bytes"
                )));
            }
            queues.push(RxQueueInfo { offset });
        }
        Ok(RxQueuesInfo {
            segment_size,
            queues,
        })
    }
    fn finish<T>(self, value: T) -> SessionResult<T> {
        if self.at != self.body.len() {
            return Err(corrupted(format_args!(
                "{} trailing bytes in body",
                self.body.len() - self.at
            )));
        }
        Ok(value)
    }
}

fn decode_request(kind: u8, id: u32, body: &[u8]) -> SessionResult<AppRequest> {
    if id == 0 {
        return Err(corrupted("request with id 0"));
    }
    let mut r = Reader { body, at: 0 };
    let request = match kind {
        KIND_ATTACH => AppRequest::Attach {
            name: r.string("app name", MAX_NAME_LEN)?,
            options: r.options()?,
        },
        KIND_DETACH => AppRequest::Detach,
        KIND_ADD_WORKER => AppRequest::AddWorker,
        KIND_DEL_WORKER => AppRequest::DelWorker { worker: r.u32()? },
        KIND_POST => AppRequest::Post {
            thread: r.u32()?,
            message: RxMessage::decode(r.bytes(body.len() - r.at)?)?,
        },
        KIND_SHARE_TOKEN => AppRequest::ShareToken,
        KIND_JOIN => AppRequest::Join {
            app: r.u32()?,
            token: r.u64()?,
        },
        k => return Err(corrupted(format_args!("unknown request kind {k:#x}"))),
    };
    r.finish(request)
}

fn decode_reply(kind: u8, id: u32, body: &[u8]) -> SessionResult<AppReply> {
    match kind {
        KIND_SEGMENT_FD if id != 0 => {
            return Err(corrupted(format_args!("segment fd with request id {id}")));
        }
        KIND_ATTACHED | KIND_WORKER_ADDED | KIND_DONE | KIND_TOKEN if id == 0 => {
            return Err(corrupted("reply with request id 0"));
        }
        _ => {}
    }
    let mut r = Reader { body, at: 0 };
    let reply = match kind {
        KIND_ATTACHED => {
            let app = r.u32()?;
            let worker = r.worker()?;
            let threads = r.u32()?;
            if !(1..=MAX_THREADS).contains(&threads) {
                return Err(corrupted(format_args!(
                    "{threads} stack threads not in 1..={MAX_THREADS}"
                )));
            }
            let rx_queues = r.rx_queues(threads)?;
            AppReply::Attached(AttachInfo {
                app,
                worker,
                threads,
                rx_queues,
            })
        }
        KIND_WORKER_ADDED => AppReply::WorkerAdded(r.worker()?),
        KIND_DONE => AppReply::Done,
        KIND_TOKEN => AppReply::ShareToken { token: r.u64()? },
        KIND_ERROR => {
            let code = r.u32()?;
            if !(ErrorCode::InvalidValue as u32..=ErrorCode::Other as u32).contains(&code) {
                return Err(corrupted(format_args!("error code {code}")));
            }
            AppReply::Error {
                code,
                detail: r.string("error detail", MAX_DETAIL_LEN)?,
            }
        }
        KIND_SEGMENT_FD => AppReply::SegmentFd {
            worker: r.u32()?,
            index: r.u32()?,
            size: r.u64()?,
        },
        k => return Err(corrupted(format_args!("unknown reply kind {k:#x}"))),
    };
    r.finish(reply)
}

fn is_request_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_ATTACH
            | KIND_DETACH
            | KIND_ADD_WORKER
            | KIND_DEL_WORKER
            | KIND_POST
            | KIND_SHARE_TOKEN
            | KIND_JOIN
    )
}

fn is_reply_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_ATTACHED | KIND_WORKER_ADDED | KIND_DONE | KIND_ERROR | KIND_SEGMENT_FD | KIND_TOKEN
    )
}

/// A frame header that passed its checks.
struct Header {
    kind: u8,
    id: u32,
    body_len: usize,
}

/// Checks a frame header; `is_known` says which kinds this side accepts.
fn parse_header(bytes: &[u8; FRAME_HEADER_LEN], is_known: fn(u8) -> bool) -> SessionResult<Header> {
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    if magic != WIRE_MAGIC {
        return Err(corrupted(format_args!("bad magic {magic:#06x}")));
    }
    let version = bytes[2];
    if version != WIRE_VERSION {
        return Err(SessionError::UnsupportedConfig(format!(
            "app socket wire version {version}, this side speaks {WIRE_VERSION}"
        )));
    }
    let kind = bytes[3];
    if !is_known(kind) {
        return Err(corrupted(format_args!("unknown kind {kind:#x}")));
    }
    let id = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if body_len > MAX_BODY {
        return Err(SessionError::InvalidValue(format!(
            "app socket frame body of {body_len} bytes exceeds {MAX_BODY}"
        )));
    }
    Ok(Header { kind, id, body_len })
}

/// Incremental decoder of frames read from the app socket.
///
/// [`FrameReader::push`] the bytes each read returns, then call
/// [`FrameReader::next_request`] (stack side) or
/// [`FrameReader::next_reply`] (app side) until it gives `Ok(None)`: the
/// reader then holds at most one partial frame (at most
/// [`FRAME_HEADER_LEN`] + [`MAX_BODY`] bytes) besides whatever the next
/// push adds. One reader serves one direction; a frame of the other
/// direction is an unknown kind.
///
/// The first error poisons the reader: every later call returns the same
/// error and pushed bytes are dropped. Close the connection (the stack may
/// first send an [`AppReply::Error`] to [`FrameReader::failed_request_id`]).
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` before this are consumed.
    start: usize,
    failure: Option<SessionError>,
    failed_id: Option<u32>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole request and its id, `None` if no whole frame is
    /// buffered yet.
    pub fn next_request(&mut self) -> SessionResult<Option<(u32, AppRequest)>> {
        self.next(is_request_kind, decode_request)
    }

    /// The next whole reply and its request id, `None` if no whole frame
    /// is buffered yet.
    pub fn next_reply(&mut self) -> SessionResult<Option<(u32, AppReply)>> {
        self.next(is_reply_kind, decode_reply)
    }

    /// Bytes buffered and not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether an error has poisoned the reader.
    pub fn is_failed(&self) -> bool {
        self.failure.is_some()
    }

    /// The request id of the frame that poisoned the reader, when its
    /// header could be read (magic, version and kind were fine).
    pub fn failed_request_id(&self) -> Option<u32> {
        self.failed_id
    }

    fn next<T>(
        &mut self,
        is_known: fn(u8) -> bool,
        decode: fn(u8, u32, &[u8]) -> SessionResult<T>,
    ) -> SessionResult<Option<(u32, T)>> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        let pending = &self.buf[self.start..];
        let Some(header_bytes) = pending.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let header = match parse_header(header_bytes, is_known) {
            Ok(h) => h,
            Err(e) => return Err(self.fail(e, None)),
        };
        let frame_len = FRAME_HEADER_LEN + header.body_len;
        let Some(body) = pending.get(FRAME_HEADER_LEN..frame_len) else {
            return Ok(None);
        };
        match decode(header.kind, header.id, body) {
            Ok(message) => {
                self.start += frame_len;
                Ok(Some((header.id, message)))
            }
            Err(e) => Err(self.fail(e, Some(header.id))),
        }
    }

    fn fail(&mut self, e: SessionError, id: Option<u32>) -> SessionError {
        self.failure = Some(e.clone());
        self.failed_id = id;
        self.buf = Vec::new();
        self.start = 0;
        e
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_rx_queue::{ControlMessage, IoMessage};
    use crate::endpoint::{Endpoint, TransportProto};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn options() -> AppOptions {
        AppOptions {
            namespace_id: "blue".into(),
            namespace_secret: 0xdead_beef_0bad_cafe,
            scope_local: true,
            proxy: true,
            segment_size: 1 << 30,
            prealloc_fifo_pairs: 7,
            use_eventfd: true,
            segment_kind: SegmentKind::Private,
            high_watermark: 80,
            low_watermark: 20,
            pct_first_alloc: 50,
            ..AppOptions::default()
        }
    }

    fn worker(eventfd: bool) -> WorkerInfo {
        WorkerInfo {
            worker: 2,
            segment_index: 5,
            segment_size: 32 << 20,
            event_queue_offset: 4096,
            event_queue_slots: 2048,
            event_queue_slot_size: 96,
            event_queue_eventfd: eventfd,
        }
    }

    fn requests() -> Vec<AppRequest> {
        vec![
            AppRequest::Attach {
                name: "echo-sérver".into(),
                options: options(),
            },
            AppRequest::Attach {
                name: String::new(),
                options: AppOptions::default(),
            },
            AppRequest::Detach,
            AppRequest::AddWorker,
            AppRequest::DelWorker { worker: u32::MAX },
            AppRequest::Post {
                thread: 2,
                message: RxMessage::Io(IoMessage::Tx {
                    session: 7 << 32 | 9,
                }),
            },
            AppRequest::Post {
                thread: 0,
                message: RxMessage::Control(ControlMessage::Connect {
                    worker: 1,
                    request: 5,
                    proto: TransportProto::Udp,
                    endpoint: Endpoint {
                        ip: "fd00::7".parse().unwrap(),
                        port: 9,
                    },
                    opaque: u64::MAX,
                }),
            },
            AppRequest::ShareToken,
            AppRequest::Join {
                app: 4,
                token: u64::MAX - 1,
            },
        ]
    }

    fn replies() -> Vec<AppReply> {
        vec![
            AppReply::Attached(AttachInfo {
                app: 3,
                worker: worker(true),
                threads: 3,
                rx_queues: RxQueuesInfo {
                    segment_size: 1 << 20,
                    queues: vec![
                        RxQueueInfo { offset: 0 },
                        RxQueueInfo { offset: 65536 },
                        RxQueueInfo { offset: 131072 },
                    ],
                },
            }),
            AppReply::Attached(AttachInfo {
                app: 0,
                worker: worker(false),
                threads: 1,
                rx_queues: RxQueuesInfo::default(),
            }),
            AppReply::WorkerAdded(worker(true)),
            AppReply::WorkerAdded(worker(false)),
            AppReply::Done,
            AppReply::ShareToken {
                token: 0x0123_4567_89ab_cdef,
            },
            AppReply::from_error(&SessionError::WrongNamespaceSecret("blue".into())),
            AppReply::SegmentFd {
                worker: 1,
                index: 9,
                size: 64 << 20,
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for (i, request) in requests().into_iter().enumerate() {
            let id = i as u32 + 1;
            let frame = encode_request(id, &request);
            let mut reader = FrameReader::new();
            reader.push(&frame);
            assert_eq!(reader.next_request().unwrap(), Some((id, request)));
            assert_eq!(reader.next_request().unwrap(), None);
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn every_reply_round_trips() {
        for (i, reply) in replies().into_iter().enumerate() {
            let id = if matches!(reply, AppReply::SegmentFd { .. }) {
                0
            } else {
                i as u32 + 1
            };
            let mut reader = FrameReader::new();
            reader.push(&encode_reply(id, &reply));
            assert_eq!(reader.next_reply().unwrap(), Some((id, reply)));
            assert_eq!(reader.next_reply().unwrap(), None);
        }
    }

    #[test]
    fn segment_fd_is_always_sent_with_id_zero() {
        let reply = AppReply::SegmentFd {
            worker: 0,
            index: 1,
            size: 2,
        };
        let mut reader = FrameReader::new();
        reader.push(&encode_reply(77, &reply));
        assert_eq!(reader.next_reply().unwrap(), Some((0, reply)));
    }

    #[test]
    fn byte_at_a_time_feeding_yields_every_message() {
        let mut stream = Vec::new();
        for (i, r) in requests().iter().enumerate() {
            stream.extend(encode_request(i as u32 + 1, r));
        }
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for b in &stream {
            reader.push(std::slice::from_ref(b));
            while let Some((_, r)) = reader.next_request().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got, requests());
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn several_frames_in_one_push_come_out_in_order() {
        let mut stream = Vec::new();
        for (i, r) in replies().iter().enumerate() {
            stream.extend(encode_reply(i as u32 + 1, r));
        }
        let mut reader = FrameReader::new();
        reader.push(&stream);
        let mut got = Vec::new();
        while let Some((_, r)) = reader.next_reply().unwrap() {
            got.push(r);
        }
        assert_eq!(got, replies());
    }

    #[test]
    fn fd_counts_follow_the_documented_order() {
        let r = replies();
        assert_eq!(r[0].fd_count(), 1 + 1 + 1 + 3);
        assert_eq!(r[1].fd_count(), 1);
        assert_eq!(r[2].fd_count(), 2);
        assert_eq!(r[3].fd_count(), 1);
        assert_eq!(r[4].fd_count(), 0);
        assert_eq!(r[5].fd_count(), 0);
        assert_eq!(r[6].fd_count(), 0);
        assert_eq!(r[7].fd_count(), 1);
    }

    #[test]
    fn attach_options_round_trip_whole() {
        let full = AppOptions {
            namespace_id: "ns".into(),
            namespace_secret: 42,
            scope_global: true,
            add_segment_size: 0,
            rx_fifo_size: 1 << 20,
            tx_fifo_size: 4096,
            max_fifo_size: 1 << 24,
            prealloc_fifo_headers: 16,
            event_queue_size: 512,
            ..AppOptions::default()
        };
        let mut reader = FrameReader::new();
        reader.push(&encode_request(3, &AppRequest::attach("app", &full)));
        let (_, back) = reader.next_request().unwrap().unwrap();
        let AppRequest::Attach { name, options } = back else {
            panic!("decoded {back:?}");
        };
        assert_eq!((name.as_str(), options), ("app", full));
    }

    #[test]
    fn error_replies_rebuild_the_typed_errors() {
        let errors = [
            SessionError::InvalidNamespace("red".into()),
            SessionError::WrongNamespaceSecret("red".into()),
            SessionError::AlreadyAttached("echo".into()),
            SessionError::AlreadyListening("0.0.0.0:80".into()),
            SessionError::NotOwner(0xabc),
            SessionError::NoSession(0x1_0000_0002),
            SessionError::NoApp(7),
            SessionError::InvalidAppWorker(3),
            SessionError::QueueFull,
        ];
        for e in errors {
            let reply = AppReply::from_error(&e);
            let mut reader = FrameReader::new();
            reader.push(&encode_reply(9, &reply));
            let (_, back) = reader.next_reply().unwrap().unwrap();
            assert_eq!(back.to_session_error(), Some(e));
        }
        assert_eq!(AppReply::Done.to_session_error(), None);
        let os = SessionError::os("bind", &std::io::Error::from(std::io::ErrorKind::Other));
        assert!(matches!(
            AppReply::from_error(&os).to_session_error(),
            Some(SessionError::Transport(_))
        ));
    }

    #[test]
    fn long_strings_are_cut_by_the_encoder_and_refused_by_validate() {
        let request = AppRequest::Attach {
            name: "é".repeat(200), // 400 bytes
            options: options(),
        };
        assert!(matches!(
            request.validate(),
            Err(SessionError::InvalidValue(_))
        ));
        let mut reader = FrameReader::new();
        reader.push(&encode_request(1, &request));
        let Some((_, AppRequest::Attach { name, .. })) = reader.next_request().unwrap() else {
            panic!("not an attach");
        };
        assert_eq!(name, "é".repeat(128));
        let detail = "x".repeat(5000);
        let reply = AppReply::Error {
            code: ErrorCode::Transport as u32,
            detail,
        };
        let mut reader = FrameReader::new();
        reader.push(&encode_reply(1, &reply));
        let Some((_, AppReply::Error { detail, .. })) = reader.next_reply().unwrap() else {
            panic!("not an error");
        };
        assert_eq!(detail.len(), MAX_DETAIL_LEN);
    }

    fn first_error(frame: &[u8], requests: bool) -> SessionError {
        let mut reader = FrameReader::new();
        reader.push(frame);
        let err = if requests {
            reader.next_request().map(|_| ()).unwrap_err()
        } else {
            reader.next_reply().map(|_| ()).unwrap_err()
        };
        assert!(reader.is_failed());
        err
    }

    #[test]
    fn bad_headers_give_typed_errors() {
        let good = encode_request(1, &AppRequest::Detach);
        let mut f = good.clone();
        f[0] ^= 0xff;
        assert!(matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("magic")));
        let mut f = good.clone();
        f[2] = 2;
        assert!(matches!(
            first_error(&f, true),
            SessionError::UnsupportedConfig(_)
        ));
        let mut f = good.clone();
        f[3] = 0x7f;
        assert!(matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("kind")));
        // A reply where a request is expected is an unknown kind.
        assert!(matches!(
            first_error(&encode_reply(1, &AppReply::Done), true),
            SessionError::Corrupted(_)
        ));
        // Oversized: refused from the header alone, before any body.
        let mut f = good[..FRAME_HEADER_LEN].to_vec();
        f[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        assert!(matches!(
            first_error(&f, true),
            SessionError::InvalidValue(_)
        ));
    }

    #[test]
    fn bad_bodies_give_typed_errors() {
        // Trailing bytes inside a body.
        let mut f = encode_request(4, &AppRequest::DelWorker { worker: 1 });
        f.push(0);
        f[8..12].copy_from_slice(&5u32.to_le_bytes());
        assert!(
            matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("trailing"))
        );
        // A body too short for its kind.
        let mut f = encode_request(4, &AppRequest::DelWorker { worker: 1 });
        f.pop();
        f[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert!(
            matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("truncated"))
        );
        // Request id 0.
        assert!(matches!(
            first_error(&encode_request(0, &AppRequest::Detach), true),
            SessionError::Corrupted(_)
        ));
        // Reply id 0 (other than segment fd and error).
        assert!(matches!(
            first_error(&encode_reply(0, &AppReply::Done), false),
            SessionError::Corrupted(_)
        ));
        let ok = encode_reply(0, &AppReply::from_error(&SessionError::QueueFull));
        let mut reader = FrameReader::new();
        reader.push(&ok);
        assert!(reader.next_reply().unwrap().is_some());
        // Error code 0 and out of range.
        for code in [0, 19, u32::MAX] {
            let f = encode_reply(
                1,
                &AppReply::Error {
                    code,
                    detail: String::new(),
                },
            );
            assert!(matches!(first_error(&f, false), SessionError::Corrupted(_)));
        }
    }

    #[test]
    fn out_of_range_enum_codes_and_booleans_are_refused() {
        let attach = encode_request(1, &requests()[0]);
        // Offset of the options in the attach body.
        let name_len = "echo-sérver".len();
        let opts = FRAME_HEADER_LEN + 2 + name_len + 2 + "blue".len() + 8;
        let segment_kind = opts + 3 + 16 + 24 + 1;
        let mut f = attach.clone();
        f[segment_kind] = 2;
        assert!(
            matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("segment kind"))
        );
        let mut f = attach.clone();
        f[opts] = 2; // scope_local
        assert!(
            matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("boolean"))
        );
        // Invalid UTF-8 in the name.
        let mut f = attach.clone();
        f[FRAME_HEADER_LEN + 2] = 0xff;
        assert!(matches!(first_error(&f, true), SessionError::Corrupted(m) if m.contains("UTF-8")));
        // A name length over the limit.
        let mut f = attach;
        f[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 2].copy_from_slice(&300u16.to_le_bytes());
        assert!(matches!(
            first_error(&f, true),
            SessionError::InvalidValue(_)
        ));
    }

    #[test]
    fn inconsistent_attach_replies_are_refused() {
        let base = match &replies()[0] {
            AppReply::Attached(info) => info.clone(),
            _ => unreachable!(),
        };
        let mut wrong_count = base.clone();
        wrong_count.threads = 2;
        let mut no_threads = base.clone();
        no_threads.threads = 0;
        no_threads.rx_queues = RxQueuesInfo::default();
        let mut too_many = base.clone();
        too_many.threads = MAX_THREADS + 1;
        too_many.rx_queues = RxQueuesInfo::default();
        let mut offset_outside = base.clone();
        offset_outside.rx_queues.queues[1].offset = 1 << 20;
        let mut size_without_queues = base;
        size_without_queues.rx_queues.queues.clear();
        for info in [
            wrong_count,
            no_threads,
            too_many,
            offset_outside,
            size_without_queues,
        ] {
            let f = encode_reply(1, &AppReply::Attached(info));
            assert!(matches!(first_error(&f, false), SessionError::Corrupted(_)));
        }
    }

    #[test]
    fn a_failed_reader_stays_failed_and_reports_the_frame_id() {
        let mut reader = FrameReader::new();
        reader.push(&encode_request(5, &AppRequest::AddWorker));
        let mut bad = encode_request(6, &AppRequest::DelWorker { worker: 1 });
        bad[8..12].copy_from_slice(&2u32.to_le_bytes());
        bad.truncate(FRAME_HEADER_LEN + 2);
        reader.push(&bad);
        reader.push(&encode_request(7, &AppRequest::Detach));
        assert_eq!(
            reader.next_request().unwrap(),
            Some((5, AppRequest::AddWorker))
        );
        let e = reader.next_request().unwrap_err();
        assert_eq!(reader.failed_request_id(), Some(6));
        reader.push(&encode_request(8, &AppRequest::Detach));
        assert_eq!(reader.next_request().unwrap_err(), e);
        assert_eq!(reader.buffered(), 0);
    }

    /// Feeds `stream` in random chunks; returns how many messages decoded
    /// before the end or the first error. Checks the reader's memory stays
    /// within one frame plus one chunk.
    fn feed(rng: &mut StdRng, stream: &[u8], requests: bool) -> usize {
        let mut reader = FrameReader::new();
        let mut decoded = 0;
        let mut at = 0;
        while at < stream.len() {
            let n = rng.random_range(1..=stream.len() - at).min(4096);
            reader.push(&stream[at..at + n]);
            at += n;
            loop {
                let next = if requests {
                    reader.next_request().map(|m| m.is_some())
                } else {
                    reader.next_reply().map(|m| m.is_some())
                };
                match next {
                    Ok(true) => decoded += 1,
                    Ok(false) => break,
                    Err(_) => return decoded,
                }
            }
            assert!(
                reader.capacity() <= 2 * (FRAME_HEADER_LEN + MAX_BODY + 4096),
                "reader holds {} bytes",
                reader.capacity()
            );
        }
        decoded
    }

    fn mutate(rng: &mut StdRng, frame: &mut Vec<u8>) {
        match rng.random_range(0..6) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..frame.len());
                    frame[i] ^= rng.random::<u8>() | 1;
                }
            }
            1 => frame.truncate(rng.random_range(0..frame.len())),
            2 => {
                let extra = rng.random_range(1..64);
                frame.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            3 => frame[3] = rng.random(),
            4 => {
                let len = if rng.random_bool(0.5) {
                    rng.random::<u32>()
                } else {
                    rng.random_range(0..200)
                };
                frame[8..12].copy_from_slice(&len.to_le_bytes());
            }
            _ => {
                // A whole random frame behind a valid-looking header.
                let len = rng.random_range(0..300);
                frame.truncate(4);
                frame.extend(rng.random::<u32>().to_le_bytes());
                frame.extend((len as u32).to_le_bytes());
                frame.extend((0..len).map(|_| rng.random::<u8>()));
            }
        }
    }

    #[test]
    fn ten_thousand_random_and_mutated_frames_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x4853);
        let reqs = requests();
        let reps = replies();
        let mut decoded = 0;
        for round in 0..10_000 {
            let as_requests = round % 2 == 0;
            let mut stream = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                let mut frame = if as_requests {
                    let r = &reqs[rng.random_range(0..reqs.len())];
                    encode_request(rng.random_range(1..100), r)
                } else {
                    let r = &reps[rng.random_range(0..reps.len())];
                    encode_reply(rng.random_range(1..100), r)
                };
                if rng.random_bool(0.7) {
                    mutate(&mut rng, &mut frame);
                }
                stream.extend(frame);
            }
            if round % 10 == 0 {
                // Pure noise.
                stream = (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect();
            }
            decoded += feed(&mut rng, &stream, as_requests);
        }
        // The unmutated frames (and some mutated ones) still decode.
        assert!(decoded > 1000, "only {decoded} messages decoded");
    }

    #[test]
    fn a_huge_declared_body_is_refused_before_it_is_buffered() {
        let mut reader = FrameReader::new();
        let mut f = encode_request(1, &AppRequest::Detach);
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        reader.push(&f);
        assert!(matches!(
            reader.next_request(),
            Err(SessionError::InvalidValue(_))
        ));
        // The body that follows is dropped, not buffered.
        reader.push(&vec![0; 1 << 20]);
        assert_eq!(reader.buffered(), 0);
    }
}
