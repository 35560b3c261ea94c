//! Typed handles and indices of the session layer.
//!
//! A session lives in the pool of the thread that owns it, so its handle
//! names both, as VPP's session handles do: the thread in the high 16 bits,
//! then a 16-bit generation of the pool slot, then the slot's index in the
//! low 32 bits. The generation changes each time a slot is reused, so a
//! late disconnect with an old handle cannot close the session that took
//! its slot since. Apps see handles as opaque `u64`s and hand them back on
//! disconnect or unlisten, so [`SessionHandle::from_u64`] accepts any value;
//! whether it names a live session (thread, slot and generation) is for the
//! pool to say.
//!
//! A [`ListenerHandle`] is a thread (high 32 bits) and an index (low 32).
//!
//! Listen sessions live in a thread's pool too (usually the main thread,
//! 0) and get a [`ListenerHandle`] with the same encoding, a distinct type
//! so that a listener cannot be disconnected as if it were a session.
//!
//! The plain indices ([`AppIndex`], [`AppWorkerIndex`], [`WorkerMapIndex`],
//! [`NamespaceIndex`], [`FibIndex`], [`CertKeyIndex`], [`CryptoEngineIndex`])
//! are newtypes over `u32` so that one
//! kind of index cannot be passed where another is expected.

use std::fmt;

/// The raw `u64` view every handle shares: apps see it, hand it back, and
/// read it in logs.
macro_rules! raw_u64_handle {
    ($name:ident) => {
        impl $name {
            /// The raw value, as apps see it.
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Takes back a raw value an app handed in. Every `u64` decodes
            /// to some handle; the pool decides whether it is live.
            pub const fn from_u64(raw: u64) -> Self {
                Self(raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl From<$name> for u64 {
            fn from(handle: $name) -> u64 {
                handle.0
            }
        }
    };
}

/// Defines a thread-and-index handle type packed into a `u64`.
macro_rules! thread_index_handle {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u64);

        impl $name {
            /// Packs a thread index (high half) and a pool index (low half).
            pub const fn new(thread: u32, index: u32) -> Self {
                Self(((thread as u64) << 32) | index as u64)
            }

            /// The thread whose pool holds the entry.
            pub const fn thread(self) -> u32 {
                (self.0 >> 32) as u32
            }

            /// The entry's index in that thread's pool.
            pub const fn index(self) -> u32 {
                (self.0 & 0xffff_ffff) as u32
            }
        }

        raw_u64_handle!($name);
    };
}

/// Handle of an established (or half-open) session: owning thread, the
/// generation of its pool slot, and the slot's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle(u64);

/// Most stack threads a session handle can name.
pub const SESSION_HANDLE_MAX_THREADS: u32 = 1 << 16;

impl SessionHandle {
    /// A handle of generation 0 (`thread` must be below
    /// [`SESSION_HANDLE_MAX_THREADS`]; higher bits are dropped).
    pub const fn new(thread: u32, index: u32) -> Self {
        Self::with_generation(thread, index, 0)
    }

    /// Packs thread (high 16 bits), slot generation (next 16) and slot
    /// index (low 32).
    pub const fn with_generation(thread: u32, index: u32, generation: u16) -> Self {
        Self(((thread as u64 & 0xffff) << 48) | ((generation as u64) << 32) | index as u64)
    }

    /// The thread whose pool holds the session.
    pub const fn thread(self) -> u32 {
        (self.0 >> 48) as u32
    }

    /// The generation of its pool slot.
    pub const fn generation(self) -> u16 {
        (self.0 >> 32) as u16
    }

    /// The session's index in that thread's pool.
    pub const fn index(self) -> u32 {
        (self.0 & 0xffff_ffff) as u32
    }
}

raw_u64_handle!(SessionHandle);

thread_index_handle!(
    /// Handle of a listen session: owning thread (usually the main thread,
    /// 0) and index in that thread's pool.
    ListenerHandle
);

/// Defines a `u32` index newtype.
macro_rules! u32_index {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl $name {
            /// The index as a `usize`, to index a pool.
            pub const fn as_usize(self) -> usize {
                self.0 as usize
            }

            /// Converts a pool index, or `None` if it does not fit in `u32`.
            pub fn from_usize(index: usize) -> Option<Self> {
                u32::try_from(index).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u32> for $name {
            fn from(index: u32) -> Self {
                Self(index)
            }
        }

        impl From<$name> for u32 {
            fn from(index: $name) -> u32 {
                index.0
            }
        }
    };
}

u32_index!(
    /// Index of an application in the global app pool.
    AppIndex
);

u32_index!(
    /// Index of an app worker in the global app-worker pool.
    AppWorkerIndex
);

u32_index!(
    /// An app's own number for one of its workers (0 is the first worker,
    /// created at attach); maps to an [`AppWorkerIndex`].
    WorkerMapIndex
);

u32_index!(
    /// Index of an app namespace; 0 is the default namespace.
    NamespaceIndex
);

u32_index!(
    /// Index of a FIB (forwarding table); 0 is the default FIB.
    FibIndex
);

u32_index!(
    /// Index of a cert/key pair in the store; 0 is the default pair.
    CertKeyIndex
);

u32_index!(
    /// Index of a crypto engine in the registry; 0 is the built-in "none".
    CryptoEngineIndex
);

impl NamespaceIndex {
    /// The default namespace, which exists from the start.
    pub const DEFAULT: Self = Self(0);
}

impl FibIndex {
    /// The default FIB.
    pub const DEFAULT: Self = Self(0);
}

impl CertKeyIndex {
    /// The default pair, which exists from the start and is never deleted.
    pub const DEFAULT: Self = Self(0);
}

impl CryptoEngineIndex {
    /// The built-in "none" engine.
    pub const NONE: Self = Self(0);
}

impl Default for NamespaceIndex {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Default for FibIndex {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_generation_and_index_have_their_own_bits() {
        let h = SessionHandle::with_generation(3, 7, 0x1234);
        assert_eq!(h.as_u64(), 0x0003_1234_0000_0007);
        assert_eq!((h.thread(), h.generation(), h.index()), (3, 0x1234, 7));
        assert_eq!(SessionHandle::new(3, 7).generation(), 0);
    }

    #[test]
    fn a_reused_slot_with_a_new_generation_is_another_handle() {
        let old = SessionHandle::with_generation(1, 42, 9);
        let new = SessionHandle::with_generation(1, 42, 10);
        assert_ne!(old, new);
        assert_eq!((old.thread(), old.index()), (new.thread(), new.index()));
    }

    #[test]
    fn extreme_values_round_trip() {
        let max_thread = SESSION_HANDLE_MAX_THREADS - 1;
        for (thread, index, generation) in [
            (0, 0, 0),
            (max_thread, 0, u16::MAX),
            (0, u32::MAX, 0),
            (max_thread, u32::MAX, u16::MAX),
        ] {
            let h = SessionHandle::with_generation(thread, index, generation);
            let back = SessionHandle::from_u64(h.as_u64());
            assert_eq!(back, h);
            assert_eq!(
                (back.thread(), back.index(), back.generation()),
                (thread, index, generation)
            );
        }
        for (thread, index) in [(0, 0), (u32::MAX, 0), (0, u32::MAX), (u32::MAX, u32::MAX)] {
            let l = ListenerHandle::from_u64(ListenerHandle::new(thread, index).as_u64());
            assert_eq!((l.thread(), l.index()), (thread, index));
        }
    }

    #[test]
    fn any_raw_value_decodes_without_panic() {
        let h = SessionHandle::from_u64(u64::MAX);
        assert_eq!(
            (h.thread(), h.generation(), h.index()),
            (0xffff, u16::MAX, u32::MAX)
        );
        assert_eq!(u64::from(h), u64::MAX);
    }

    #[test]
    fn handles_display_as_hex() {
        assert_eq!(SessionHandle::new(1, 0x2a).to_string(), "0x100000000002a");
        assert_eq!(ListenerHandle::new(0, 5).to_string(), "0x5");
    }

    #[test]
    fn index_from_usize_rejects_values_above_u32() {
        assert_eq!(AppIndex::from_usize(9), Some(AppIndex(9)));
        assert_eq!(
            AppIndex::from_usize(u32::MAX as usize),
            Some(AppIndex(u32::MAX))
        );
        assert_eq!(AppIndex::from_usize(u32::MAX as usize + 1), None);
        assert_eq!(FibIndex(4).as_usize(), 4);
        assert_eq!(NamespaceIndex::DEFAULT.to_string(), "0");
    }
}
