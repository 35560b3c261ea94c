//! Datagrams in a session's fifos: each one is a header (payload length,
//! remote and local endpoint, [`DGRAM_HEADER_SIZE`] bytes) followed by its
//! payload, written whole or not at all, so the reader never sees half a
//! datagram. The stack and the app library both read and write them here.
//!
//! The fifo's other side may be an untrusted process: a header that does not
//! decode is `Corrupted`, and a length that claims more bytes than the fifo
//! can ever hold is too.

use hoststack_shm::fifo::{FifoConsumer, FifoProducer};

use crate::app_event::{DGRAM_HEADER_SIZE, decode_dgram_header, encode_dgram_header};
use crate::endpoint::Endpoint;
use crate::error::{SessionError, SessionResult};

/// The header of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramHeader {
    /// Payload bytes.
    pub len: u16,
    /// The far end (source on receive, destination on send).
    pub remote: Endpoint,
    /// Our address (arrived on, or to leave from; zero = the stack's choice).
    pub local: Endpoint,
}

/// Queues one datagram; `Ok(false)` when the fifo lacks room for all of it
/// (nothing is written then). `InvalidValue` for a payload over 65,535 bytes.
pub fn write_datagram(
    tx: &mut FifoProducer,
    remote: &Endpoint,
    local: &Endpoint,
    payload: &[u8],
) -> SessionResult<bool> {
    let Ok(len) = u16::try_from(payload.len()) else {
        return Err(SessionError::InvalidValue(format!(
            "datagram of {} bytes",
            payload.len()
        )));
    };
    if (tx.max_enqueue()? as usize) < DGRAM_HEADER_SIZE + payload.len() {
        return Ok(false);
    }
    tx.enqueue(&encode_dgram_header(len, remote, local))?;
    tx.enqueue(payload)?;
    Ok(true)
}

/// The header of the next datagram, once all of it (header and payload) is
/// in the fifo; `Ok(None)` before that.
pub fn peek_datagram(rx: &FifoConsumer) -> SessionResult<Option<DatagramHeader>> {
    let avail = rx.max_dequeue()? as usize;
    if avail < DGRAM_HEADER_SIZE {
        return Ok(None);
    }
    let mut hdr = [0u8; DGRAM_HEADER_SIZE];
    if rx.peek(0, &mut hdr)? < DGRAM_HEADER_SIZE {
        return Ok(None);
    }
    let (len, remote, local) = decode_dgram_header(&hdr)?;
    let whole = DGRAM_HEADER_SIZE + usize::from(len);
    if whole > rx.fifo().size() as usize {
        return Err(SessionError::Corrupted(format!(
            "a datagram of {len} bytes in a fifo of {}",
            rx.fifo().size()
        )));
    }
    Ok((avail >= whole).then_some(DatagramHeader { len, remote, local }))
}

/// Takes the next whole datagram: copies up to `buf.len()` bytes of its
/// payload into `buf` (the rest is dropped, as `recvfrom` truncates) and
/// returns how many, with its header. `Ok(None)` when none is complete.
pub fn read_datagram(
    rx: &mut FifoConsumer,
    buf: &mut [u8],
) -> SessionResult<Option<(usize, DatagramHeader)>> {
    let Some(h) = peek_datagram(rx)? else {
        return Ok(None);
    };
    let take = usize::from(h.len).min(buf.len());
    rx.peek(DGRAM_HEADER_SIZE as u32, &mut buf[..take])?;
    rx.drop_bytes((DGRAM_HEADER_SIZE + usize::from(h.len)) as u32)?;
    Ok(Some((take, h)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoststack_shm::fifo::Fifo;
    use hoststack_shm::segment::Segment;

    fn ep(s: &str) -> Endpoint {
        let sa: std::net::SocketAddr = s.parse().unwrap();
        Endpoint::from(sa)
    }

    fn fifo(size: u32) -> (Segment, Fifo) {
        let seg = Segment::create("dgram-test", 1 << 20).unwrap();
        let f = Fifo::init_at(seg.region(), 0, size).unwrap();
        (seg, f)
    }

    #[test]
    fn datagrams_come_out_whole_and_in_order() {
        let (_seg, f) = fifo(4096);
        let (mut tx, mut rx) = (f.producer(), f.consumer());
        let (a, b) = (ep("10.0.0.1:53"), ep("[fd00::1]:5353"));
        assert!(write_datagram(&mut tx, &a, &b, b"first").unwrap());
        assert!(write_datagram(&mut tx, &b, &a, &[7u8; 300]).unwrap());
        let mut buf = [0u8; 512];
        let (n, h) = read_datagram(&mut rx, &mut buf).unwrap().unwrap();
        assert_eq!((&buf[..n], h.remote, h.local), (&b"first"[..], a, b));
        let (n, h) = read_datagram(&mut rx, &mut buf).unwrap().unwrap();
        assert_eq!((n, h.len, h.remote), (300, 300, b));
        assert_eq!(read_datagram(&mut rx, &mut buf).unwrap(), None);
    }

    #[test]
    fn a_datagram_that_does_not_fit_is_not_written_at_all() {
        let (_seg, f) = fifo(256);
        let (mut tx, rx) = (f.producer(), f.consumer());
        let a = ep("10.0.0.1:53");
        assert!(!write_datagram(&mut tx, &a, &a, &[0u8; 250]).unwrap());
        assert_eq!(rx.max_dequeue().unwrap(), 0);
        assert!(matches!(
            write_datagram(&mut tx, &a, &a, &vec![0u8; 70_000]),
            Err(SessionError::InvalidValue(_))
        ));
    }

    #[test]
    fn a_short_buffer_truncates_and_drops_the_rest() {
        let (_seg, f) = fifo(4096);
        let (mut tx, mut rx) = (f.producer(), f.consumer());
        let a = ep("10.0.0.1:53");
        write_datagram(&mut tx, &a, &a, b"0123456789").unwrap();
        write_datagram(&mut tx, &a, &a, b"next").unwrap();
        let mut buf = [0u8; 4];
        let (n, h) = read_datagram(&mut rx, &mut buf).unwrap().unwrap();
        assert_eq!((&buf[..n], h.len), (&b"0123"[..], 10));
        let (n, _) = read_datagram(&mut rx, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], b"next");
    }

    #[test]
    fn a_header_claiming_more_than_the_fifo_holds_is_corrupted() {
        let (_seg, f) = fifo(256);
        let (mut tx, rx) = (f.producer(), f.consumer());
        let a = ep("10.0.0.1:53");
        tx.enqueue(&encode_dgram_header(60_000, &a, &a)).unwrap();
        assert!(matches!(
            peek_datagram(&rx),
            Err(SessionError::Corrupted(_))
        ));
        let (_seg, g) = fifo(256);
        g.producer().enqueue(&[0xff; DGRAM_HEADER_SIZE]).unwrap();
        assert!(matches!(
            peek_datagram(&g.consumer()),
            Err(SessionError::Corrupted(_))
        ));
    }
}
