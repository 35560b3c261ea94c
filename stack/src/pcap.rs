//! Packet capture: every frame a stack's workers receive or send, written
//! to a pcap file (`tshark -r` and Wireshark read it) while a capture runs.
//!
//! One [`Capture`] is shared by all workers of a stack. When no capture
//! runs, the cost on the datapath is one relaxed atomic load per frame.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{StackError, StackResult};

/// pcap's classic magic (microsecond timestamps), version 2.4.
const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
/// Link type Ethernet.
const LINKTYPE_ETHERNET: u32 = 1;
/// Bytes of a frame kept (all of it, up to this).
const SNAPLEN: u32 = 65535;

struct CaptureFile {
    out: BufWriter<File>,
    path: PathBuf,
    max: u64,
}

/// The capture switch and file of one stack.
#[derive(Default)]
pub struct Capture {
    active: AtomicBool,
    written: AtomicU64,
    file: Mutex<Option<CaptureFile>>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

/// What a stopped capture wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSummary {
    /// The file.
    pub path: PathBuf,
    /// Frames written.
    pub frames: u64,
}

impl Capture {
    /// True while a capture runs.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Starts writing frames to `path` (replacing it), at most `max` of
    /// them (0 = no limit). A capture already running is an error.
    pub fn start(&self, path: &Path, max: u64) -> StackResult<()> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(StackError::Config(
                "a capture is already running (stop it first)".into(),
            ));
        }
        let file = File::create(path)
            .map_err(|e| StackError::os(format!("creating {}", path.display()), e))?;
        let mut out = BufWriter::new(file);
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&PCAP_MAGIC.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)
            .map_err(|e| StackError::os("writing the pcap header", e))?;
        *slot = Some(CaptureFile {
            out,
            path: path.to_path_buf(),
            max,
        });
        self.written.store(0, Ordering::Relaxed);
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops the capture and flushes the file.
    pub fn stop(&self) -> StackResult<CaptureSummary> {
        self.active.store(false, Ordering::Release);
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut f) = slot.take() else {
            return Err(StackError::Config("no capture is running".into()));
        };
        f.out
            .flush()
            .map_err(|e| StackError::os("flushing the capture", e))?;
        Ok(CaptureSummary {
            path: f.path,
            frames: self.written.load(Ordering::Relaxed),
        })
    }

    /// Frames written by the running (or last) capture.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records one frame (called by workers for every frame in and out
    /// while active).
    pub fn record(&self, frame: &[u8]) {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = slot.as_mut() else { return };
        if f.max != 0 && self.written.load(Ordering::Relaxed) >= f.max {
            self.active.store(false, Ordering::Release);
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let len = frame.len().min(SNAPLEN as usize) as u32;
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&(ts.as_secs() as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
        rec[8..12].copy_from_slice(&len.to_le_bytes());
        rec[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        // A write error (disk full) ends the capture rather than the stack.
        if f.out
            .write_all(&rec)
            .and_then(|()| f.out.write_all(&frame[..len as usize]))
            .is_err()
        {
            tracing::warn!(path = %f.path.display(), "capture write failed; capture stopped");
            self.active.store(false, Ordering::Release);
            return;
        }
        self.written.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_writes_a_pcap_header_and_one_record_per_frame_up_to_max() {
        let c = Capture::default();
        let path = std::env::temp_dir().join(format!("hs-pcap-test-{}.pcap", std::process::id()));
        c.start(&path, 2).unwrap();
        assert!(c.start(&path, 0).is_err(), "a second capture started");
        for len in [60usize, 1514, 100] {
            c.record(&vec![0xab; len]);
        }
        let s = c.stop().unwrap();
        assert_eq!(s.frames, 2);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..4], &PCAP_MAGIC.to_le_bytes());
        assert_eq!(bytes.len(), 24 + 16 + 60 + 16 + 1514);
        assert!(c.stop().is_err(), "stopping twice worked");
        let _ = std::fs::remove_file(&path);
    }
}
