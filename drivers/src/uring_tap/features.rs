//! Which io_uring and TUN features the running kernel has, decided once
//! when a TAP queue opens: from the kernel's release number for setup flags
//! and registrations (which fail late or silently on kernels without them),
//! and from the ring's opcode probe for the multishot read. Each feature
//! has a fallback, so an older kernel still runs the queue, only slower.

use std::fmt;

/// A kernel release, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Patch level (0 when absent).
    pub patch: u32,
}

impl KernelVersion {
    /// `major.minor`.
    pub(super) const fn new(major: u32, minor: u32) -> Self {
        Self {
            major,
            minor,
            patch: 0,
        }
    }

    /// Reads a release string (`6.18.0-1-amd64`, `5.15.0`, `6.7`); `None`
    /// when it does not start with two dotted numbers.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.trim().splitn(3, '.');
        let num = |s: &str| -> Option<u32> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let major = num(parts.next()?)?;
        let minor = num(parts.next()?)?;
        let patch = parts.next().and_then(num).unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Cooperative task running and its "work pending" flag (5.19): the kernel
/// stops interrupting the worker for every completion and raises a flag the
/// poll loop reads instead.
pub(super) const COOP_TASKRUN: KernelVersion = KernelVersion::new(5, 19);
/// Provided buffer rings (5.19).
pub(super) const PBUF_RING: KernelVersion = KernelVersion::new(5, 19);
/// `IORING_OP_READ_MULTISHOT` (6.7).
pub(super) const READ_MULTISHOT: KernelVersion = KernelVersion::new(6, 7);
/// Registered files and buffers (5.1; sparse and updates later, not used).
pub(super) const REGISTERED: KernelVersion = KernelVersion::new(5, 1);
/// Synchronous cancellation of every request on a ring (6.0).
pub(super) const SYNC_CANCEL: KernelVersion = KernelVersion::new(6, 0);
/// UDP segmentation offload on a TAP (`TUN_F_USO4|USO6`, 6.2).
pub(super) const TUN_USO: KernelVersion = KernelVersion::new(6, 2);

/// How received frames are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RxMode {
    /// The best the kernel has: a multishot read over a provided buffer
    /// ring where it exists, else one read per frame.
    #[default]
    Auto,
    /// One multishot read over a provided buffer ring (6.7+).
    Multishot,
    /// Reads kept posted, one per frame, into fixed buffers (any kernel
    /// with io_uring).
    SingleShot,
}

impl std::str::FromStr for RxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "multishot" => Ok(Self::Multishot),
            "single" | "singleshot" => Ok(Self::SingleShot),
            _ => Err(format!(
                "unknown TAP read mode '{s}' (expected auto, multishot or single)"
            )),
        }
    }
}

/// What a queue uses, decided at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringFeatures {
    /// The running kernel (None when its release did not parse: then only
    /// what the probe shows is used).
    pub kernel: Option<KernelVersion>,
    /// COOP_TASKRUN + TASKRUN_FLAG set up.
    pub coop_taskrun: bool,
    /// The multishot read over a provided buffer ring.
    pub multishot: bool,
    /// The TAP fd registered (fixed file).
    pub fixed_file: bool,
    /// Frame buffers registered (fixed buffers).
    pub fixed_buffers: bool,
    /// Sync cancel at close.
    pub sync_cancel: bool,
}

impl UringFeatures {
    /// Whether `kernel` is at least `min` (an unknown kernel is not).
    pub fn at_least(kernel: Option<KernelVersion>, min: KernelVersion) -> bool {
        kernel.is_some_and(|k| k >= min)
    }

    /// What to try on `kernel`: the setup flags and registrations it has,
    /// and the multishot read when `rx` allows it and `probe_multishot`
    /// (the ring's opcode probe) says the opcode exists.
    pub fn plan(kernel: Option<KernelVersion>, rx: RxMode, probe_multishot: bool) -> Self {
        let has = |min| Self::at_least(kernel, min);
        Self {
            kernel,
            coop_taskrun: has(COOP_TASKRUN),
            multishot: rx != RxMode::SingleShot
                && probe_multishot
                && has(PBUF_RING)
                && has(READ_MULTISHOT),
            fixed_file: has(REGISTERED),
            fixed_buffers: has(REGISTERED),
            sync_cancel: has(SYNC_CANCEL),
        }
    }

    /// One line for `show interface`: `multishot read, coop taskrun, ...`.
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.multishot {
            "multishot read + buffer ring"
        } else {
            "single reads"
        }];
        if self.fixed_file {
            parts.push("fixed file");
        }
        if self.fixed_buffers {
            parts.push("fixed buffers");
        }
        if self.coop_taskrun {
            parts.push("coop taskrun");
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_with_and_without_suffixes() {
        assert_eq!(
            KernelVersion::parse("6.18.0-1-amd64"),
            Some(KernelVersion {
                major: 6,
                minor: 18,
                patch: 0
            })
        );
        assert_eq!(
            KernelVersion::parse("5.15.133+"),
            Some(KernelVersion {
                major: 5,
                minor: 15,
                patch: 133
            })
        );
        assert_eq!(KernelVersion::parse("6.7"), Some(KernelVersion::new(6, 7)));
        assert_eq!(
            KernelVersion::parse("6.7-rc1"),
            Some(KernelVersion::new(6, 7))
        );
        assert_eq!(KernelVersion::parse("linux"), None);
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse(""), None);
    }

    #[test]
    fn old_kernels_fall_back_and_new_ones_get_everything() {
        let new = UringFeatures::plan(Some(KernelVersion::new(6, 18)), RxMode::Auto, true);
        assert!(new.multishot && new.coop_taskrun && new.fixed_file && new.sync_cancel);
        // 6.6 has buffer rings but no multishot read.
        let f = UringFeatures::plan(Some(KernelVersion::new(6, 6)), RxMode::Auto, true);
        assert!(!f.multishot && f.coop_taskrun);
        let f = UringFeatures::plan(Some(KernelVersion::new(5, 15)), RxMode::Auto, false);
        assert!(!f.multishot && !f.coop_taskrun && !f.sync_cancel && f.fixed_file);
        // Asked for single reads, or the probe says no: no multishot.
        let f = UringFeatures::plan(Some(KernelVersion::new(6, 18)), RxMode::SingleShot, true);
        assert!(!f.multishot);
        let f = UringFeatures::plan(Some(KernelVersion::new(6, 18)), RxMode::Auto, false);
        assert!(!f.multishot);
        // An unreadable release trusts nothing version-gated.
        let f = UringFeatures::plan(None, RxMode::Auto, true);
        assert!(!f.multishot && !f.coop_taskrun && !f.fixed_file);
        assert!(new.describe().starts_with("multishot read"));
    }

    #[test]
    fn rx_modes_parse() {
        assert_eq!("auto".parse::<RxMode>(), Ok(RxMode::Auto));
        assert_eq!("single".parse::<RxMode>(), Ok(RxMode::SingleShot));
        assert!("bogus".parse::<RxMode>().is_err());
    }
}
