//! TCP segments in and out, through smoltcp's wire types.
//!
//! Parsing checks the checksum (unless the caller already did) and the header with
//! `TcpPacket`, then reads fields and options with `TcpRepr`. Emitting writes the header and
//! options with `TcpRepr`, then the payload straight from the caller's buffer (our send
//! buffer is chunked, so it is copied in place rather than passed as one slice), then the
//! checksum over the pseudo-header.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, TcpControl, TcpPacket, TcpRepr, TcpTimestampRepr, checksum,
};

use crate::config::TxChecksum;

use crate::reassembly::MAX_SACK_BLOCKS;
use crate::seqnum::SeqNum;

/// Why a segment was refused before any connection saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    BadChecksum,
    Malformed,
}

/// A parsed incoming segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment<'a> {
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) seq: SeqNum,
    pub(crate) ack: Option<SeqNum>,
    pub(crate) syn: bool,
    pub(crate) fin: bool,
    pub(crate) rst: bool,
    pub(crate) window: u16,
    pub(crate) mss: Option<u16>,
    pub(crate) window_scale: Option<u8>,
    pub(crate) sack_permitted: bool,
    pub(crate) sack: [Option<(SeqNum, SeqNum)>; MAX_SACK_BLOCKS],
    /// (TSval, TSecr)
    pub(crate) timestamp: Option<(u32, u32)>,
    pub(crate) payload: &'a [u8],
}

impl Segment<'_> {
    /// Length in sequence space.
    pub(crate) fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.syn) + u32::from(self.fin)
    }
}

/// Parses `bytes` (TCP header and payload) sent from `src` to `dst`.
///
/// The header goes through smoltcp's `TcpPacket` (length checks, field access); options are
/// read here rather than through `TcpRepr::parse`, which logs on some malformed options and
/// this path must not log.
pub(crate) fn parse<'a>(
    src: &IpAddress,
    dst: &IpAddress,
    bytes: &'a [u8],
    verify_checksum: bool,
) -> Result<Segment<'a>, ParseError> {
    let packet = TcpPacket::new_checked(bytes).map_err(|_| ParseError::Malformed)?;
    if verify_checksum && !packet.verify_checksum(src, dst) {
        return Err(ParseError::BadChecksum);
    }
    if packet.src_port() == 0 || packet.dst_port() == 0 {
        return Err(ParseError::Malformed);
    }
    let (syn, fin, rst) = (packet.syn(), packet.fin(), packet.rst());
    // SYN+FIN, SYN+RST and FIN+RST have no meaning; refusing them is what smoltcp does too.
    if u8::from(syn) + u8::from(fin) + u8::from(rst) > 1 {
        return Err(ParseError::Malformed);
    }
    let mut seg = Segment {
        src_port: packet.src_port(),
        dst_port: packet.dst_port(),
        seq: packet.seq_number().into(),
        ack: packet.ack().then(|| packet.ack_number().into()),
        syn,
        fin,
        rst,
        window: packet.window_len(),
        mss: None,
        window_scale: None,
        sack_permitted: false,
        sack: [None; MAX_SACK_BLOCKS],
        timestamp: None,
        payload: packet.payload(),
    };
    parse_options(packet.options(), &mut seg)?;
    Ok(seg)
}

const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WS: u8 = 3;
const OPT_SACK_PERMITTED: u8 = 4;
const OPT_SACK: u8 = 5;
const OPT_TIMESTAMP: u8 = 8;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// RFC 9293 §3.2 option list; a wrong length for a known option or a truncated option is
/// malformed, unknown options are skipped.
fn parse_options(mut opts: &[u8], seg: &mut Segment<'_>) -> Result<(), ParseError> {
    while let Some(&kind) = opts.first() {
        match kind {
            OPT_END => break,
            OPT_NOP => {
                opts = &opts[1..];
                continue;
            }
            _ => {}
        }
        let len = usize::from(*opts.get(1).ok_or(ParseError::Malformed)?);
        if len < 2 || len > opts.len() {
            return Err(ParseError::Malformed);
        }
        let data = &opts[2..len];
        match (kind, len) {
            (OPT_MSS, 4) => seg.mss = Some(u16::from_be_bytes([data[0], data[1]])),
            (OPT_WS, 3) => seg.window_scale = Some(data[0].min(14)),
            (OPT_SACK_PERMITTED, 2) => seg.sack_permitted = true,
            (OPT_TIMESTAMP, 10) => seg.timestamp = Some((be32(&data[..4]), be32(&data[4..]))),
            (OPT_SACK, _) if len >= 10 && (len - 2) % 8 == 0 => {
                // Up to four blocks fit; the first three are the most recent (RFC 2018 §4).
                for (slot, block) in seg.sack.iter_mut().zip(data.chunks_exact(8)) {
                    *slot = Some((
                        SeqNum::new(be32(&block[..4])),
                        SeqNum::new(be32(&block[4..])),
                    ));
                }
            }
            (OPT_MSS | OPT_WS | OPT_SACK_PERMITTED | OPT_TIMESTAMP | OPT_SACK, _) => {
                return Err(ParseError::Malformed);
            }
            _ => {}
        }
        opts = &opts[len..];
    }
    Ok(())
}

/// The header of a segment to send.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Header {
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) seq: SeqNum,
    pub(crate) ack: Option<SeqNum>,
    pub(crate) syn: bool,
    pub(crate) fin: bool,
    pub(crate) rst: bool,
    pub(crate) psh: bool,
    pub(crate) window: u16,
    pub(crate) mss: Option<u16>,
    pub(crate) window_scale: Option<u8>,
    pub(crate) sack_permitted: bool,
    pub(crate) sack: [Option<(SeqNum, SeqNum)>; MAX_SACK_BLOCKS],
    pub(crate) timestamp: Option<(u32, u32)>,
}

impl Header {
    fn repr(&self) -> TcpRepr<'static> {
        let control = if self.syn {
            TcpControl::Syn
        } else if self.fin {
            TcpControl::Fin
        } else if self.rst {
            TcpControl::Rst
        } else {
            TcpControl::None
        };
        let mut sack_ranges = [None; 3];
        for (out, block) in sack_ranges.iter_mut().zip(self.sack.iter()) {
            *out = block.map(|(a, b)| (a.get(), b.get()));
        }
        TcpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
            control,
            seq_number: self.seq.into(),
            ack_number: self.ack.map(Into::into),
            window_len: self.window,
            window_scale: self.window_scale,
            max_seg_size: self.mss,
            sack_permitted: self.sack_permitted,
            sack_ranges,
            timestamp: self
                .timestamp
                .map(|(tsval, tsecr)| TcpTimestampRepr::new(tsval, tsecr)),
            payload: &[],
        }
    }

    /// Header length with options.
    pub(crate) fn len(&self) -> usize {
        self.repr().header_len()
    }

    /// Writes header, `payload_len` bytes from `fill`, and the checksum (full, or the
    /// pseudo-header sum for a device to complete) into `buf`; returns the segment length,
    /// or `None` if `buf` is too small.
    pub(crate) fn emit(
        &self,
        src: &IpAddress,
        dst: &IpAddress,
        buf: &mut [u8],
        payload_len: usize,
        fill: impl FnOnce(&mut [u8]),
        csum: TxChecksum,
    ) -> Option<usize> {
        let repr = self.repr();
        let total = repr.header_len() + payload_len;
        let buf = buf.get_mut(..total)?;
        let mut packet = TcpPacket::new_unchecked(buf);
        repr.emit(&mut packet, src, dst, &ChecksumCapabilities::ignored());
        if self.psh {
            packet.set_psh(true);
        }
        fill(&mut packet.payload_mut()[..payload_len]);
        match csum {
            TxChecksum::Full => packet.fill_checksum(src, dst),
            TxChecksum::Partial => packet.set_checksum(checksum::pseudo_header(
                src,
                dst,
                IpProtocol::Tcp,
                total as u32,
            )),
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn emit_then_parse_round_trips_options_and_payload() {
        let src = IpAddress::from(Ipv4Addr::new(10, 0, 0, 1));
        let dst = IpAddress::from(Ipv4Addr::new(10, 0, 0, 2));
        let header = Header {
            src_port: 1234,
            dst_port: 80,
            seq: SeqNum::new(u32::MAX - 1),
            ack: Some(SeqNum::new(77)),
            fin: true,
            psh: true,
            window: 512,
            sack: [
                Some((SeqNum::new(100), SeqNum::new(200))),
                Some((SeqNum::new(300), SeqNum::new(400))),
                None,
            ],
            timestamp: Some((5, 6)),
            ..Header::default()
        };
        let mut buf = [0u8; 200];
        let len = header
            .emit(
                &src,
                &dst,
                &mut buf,
                5,
                |p| p.copy_from_slice(b"hello"),
                TxChecksum::Full,
            )
            .unwrap();
        assert_eq!(len, header.len() + 5);
        let seg = parse(&src, &dst, &buf[..len], true).unwrap();
        assert_eq!(seg.seq, header.seq);
        assert_eq!(seg.ack, header.ack);
        assert!(seg.fin && !seg.syn && !seg.rst);
        assert_eq!(seg.sack, header.sack);
        assert_eq!(seg.timestamp, Some((5, 6)));
        assert_eq!(seg.payload, b"hello");
        assert_eq!(seg.seq_len(), 6);
        buf[len - 1] ^= 1;
        assert_eq!(
            parse(&src, &dst, &buf[..len], true).unwrap_err(),
            ParseError::BadChecksum
        );
        assert!(parse(&src, &dst, &buf[..10], false).is_err());
    }

    #[test]
    fn a_partial_checksum_is_the_pseudo_header_sum_and_completes_to_the_full_one() {
        let src = IpAddress::from(Ipv4Addr::new(10, 0, 0, 1));
        let dst = IpAddress::from(Ipv4Addr::new(10, 0, 0, 2));
        let header = Header {
            src_port: 40000,
            dst_port: 7,
            seq: SeqNum::new(9),
            ack: Some(SeqNum::new(3)),
            window: 1000,
            ..Header::default()
        };
        let payload: Vec<u8> = (0..999u32).map(|i| (i * 13) as u8).collect();
        let (mut full, mut partial) = ([0u8; 1100], [0u8; 1100]);
        let fill = |p: &mut [u8]| p.copy_from_slice(&payload);
        let n = header
            .emit(&src, &dst, &mut full, payload.len(), fill, TxChecksum::Full)
            .unwrap();
        let m = header
            .emit(
                &src,
                &dst,
                &mut partial,
                payload.len(),
                fill,
                TxChecksum::Partial,
            )
            .unwrap();
        assert_eq!(n, m);
        let seed = checksum::pseudo_header(&src, &dst, IpProtocol::Tcp, n as u32);
        assert_eq!(u16::from_be_bytes([partial[16], partial[17]]), seed);
        assert_eq!(full[..16], partial[..16]);
        assert_eq!(full[18..n], partial[18..n]);
        // What a device does: sum the segment as it is (seed included) and
        // store the complement.
        let completed = !checksum::data(&partial[..n]);
        assert_eq!(u16::from_be_bytes([full[16], full[17]]), completed);
        // The engine's own parser refuses the partial form: it is for the
        // device, never for the wire.
        assert!(parse(&src, &dst, &partial[..n], true).is_err());
        assert!(parse(&src, &dst, &full[..n], true).is_ok());
    }

    #[test]
    fn options_with_bad_lengths_are_malformed_and_unknown_ones_skipped() {
        let src = IpAddress::from(Ipv4Addr::new(10, 0, 0, 1));
        let header = Header {
            src_port: 1,
            dst_port: 2,
            timestamp: Some((1, 2)),
            ..Header::default()
        };
        let mut buf = [0u8; 64];
        let len = header
            .emit(&src, &src, &mut buf, 0, |_| {}, TxChecksum::Full)
            .unwrap();
        // Options start at 20 with the timestamp. Turn it into an unknown kind 99.
        assert_eq!(&buf[20..22], &[8, 10]);
        buf[20] = 99;
        let seg = parse(&src, &src, &buf[..len], false).unwrap();
        assert_eq!(seg.timestamp, None);
        // A known option with the wrong length, or running past the header, is refused.
        buf[20] = 8;
        buf[21] = 9;
        assert_eq!(
            parse(&src, &src, &buf[..len], false).unwrap_err(),
            ParseError::Malformed
        );
        buf[21] = 40;
        assert_eq!(
            parse(&src, &src, &buf[..len], false).unwrap_err(),
            ParseError::Malformed
        );
        buf[21] = 0;
        assert_eq!(
            parse(&src, &src, &buf[..len], false).unwrap_err(),
            ParseError::Malformed
        );
    }

    #[test]
    fn too_small_a_buffer_is_refused() {
        let src = IpAddress::from(Ipv4Addr::new(10, 0, 0, 1));
        let header = Header {
            src_port: 1,
            dst_port: 2,
            ..Header::default()
        };
        let mut buf = [0u8; 19];
        assert!(
            header
                .emit(&src, &src, &mut buf, 0, |_| {}, TxChecksum::Full)
                .is_none()
        );
    }
}
