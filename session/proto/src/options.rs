//! The options an app attaches with (VPP's attach options), checked the way
//! VPP's `vnet_application_attach` checks them: prealloc fifo pairs with
//! prealloc fifo headers is `UnsupportedConfig`, eventfd message queues
//! without memfd segments is `UnsupportedConfig`, and no scope flag means
//! global scope. The same type travels in the app socket's attach request.

use crate::error::{SessionError, SessionResult};

/// Segment flavour an app asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentKind {
    /// memfd segments another process can map (the only kind hoststack
    /// makes; external apps need it).
    #[default]
    Memfd,
    /// Process-private segments (VPP's builtin default). Accepted for
    /// builtin apps and backed by memfd all the same; cannot carry eventfd
    /// message queues.
    Private,
}

/// Everything an app may set when it attaches (VPP's attach options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppOptions {
    /// Namespace id; empty means the default namespace.
    pub namespace_id: String,
    /// The namespace's secret.
    pub namespace_secret: u64,
    /// Listen and connect in the namespace's local table (cut-through).
    pub scope_local: bool,
    /// Listen and connect through transports.
    pub scope_global: bool,
    /// Proxy app (may listen on an endpoint it does not own the address of).
    pub proxy: bool,
    /// Bytes of each worker's first segment.
    pub segment_size: usize,
    /// Bytes of each segment added when the first is full; 0 never adds.
    pub add_segment_size: usize,
    /// Default rx fifo bytes.
    pub rx_fifo_size: u32,
    /// Default tx fifo bytes.
    pub tx_fifo_size: u32,
    /// Largest fifo allowed.
    pub max_fifo_size: u32,
    /// Fifo pairs allocated up front.
    pub prealloc_fifo_pairs: u32,
    /// Fifo headers allocated up front.
    pub prealloc_fifo_headers: u32,
    /// Slots of each worker's event queue.
    pub event_queue_size: u32,
    /// Signal the event queue with an eventfd.
    pub use_eventfd: bool,
    /// Segment flavour.
    pub segment_kind: SegmentKind,
    /// High watermark of tx fifos, percent of the fifo.
    pub high_watermark: u8,
    /// Low watermark of tx fifos, percent of the fifo.
    pub low_watermark: u8,
    /// Share of the first segment preallocated fifos may take, percent.
    pub pct_first_alloc: u8,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            namespace_id: String::new(),
            namespace_secret: 0,
            scope_local: false,
            scope_global: false,
            proxy: false,
            segment_size: 32 << 20,
            add_segment_size: 32 << 20,
            rx_fifo_size: 64 << 10,
            tx_fifo_size: 64 << 10,
            max_fifo_size: 16 << 20,
            prealloc_fifo_pairs: 0,
            prealloc_fifo_headers: 0,
            event_queue_size: 2048,
            use_eventfd: false,
            segment_kind: SegmentKind::Memfd,
            high_watermark: 100,
            low_watermark: 0,
            pct_first_alloc: 100,
        }
    }
}

/// The two scopes an app listens and connects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppScope {
    /// Local scope (the namespace's local table, cut-through).
    pub local: bool,
    /// Global scope (transports, the FIB's table).
    pub global: bool,
}

impl AppOptions {
    /// Checks the options and derives the scope; no scope flag means global.
    pub fn validate(&self) -> SessionResult<AppScope> {
        if self.prealloc_fifo_pairs != 0 && self.prealloc_fifo_headers != 0 {
            return Err(SessionError::UnsupportedConfig(
                "prealloc fifo pairs and prealloc fifo headers are mutually exclusive".into(),
            ));
        }
        if self.use_eventfd && self.segment_kind != SegmentKind::Memfd {
            return Err(SessionError::UnsupportedConfig(
                "eventfd message queues need memfd segments".into(),
            ));
        }
        if self.high_watermark > 100 || self.low_watermark > self.high_watermark {
            return Err(SessionError::InvalidValue(format!(
                "watermarks must satisfy low <= high <= 100 (got low {} high {})",
                self.low_watermark, self.high_watermark
            )));
        }
        if self.pct_first_alloc == 0 || self.pct_first_alloc > 100 {
            return Err(SessionError::InvalidValue(format!(
                "percentage of first allocation {} is outside 1..=100",
                self.pct_first_alloc
            )));
        }
        if self.event_queue_size < 2 {
            return Err(SessionError::InvalidValue(
                "event queue needs at least 2 slots".into(),
            ));
        }
        let (local, global) = match (self.scope_local, self.scope_global) {
            (false, false) => (false, true),
            s => s,
        };
        Ok(AppScope { local, global })
    }
}

/// Sizes an app gets when it asks for 0: a daemon's configured defaults
/// for segment, fifo and event-queue sizes. Sizes an app names itself are
/// kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSizeDefaults {
    /// First segment size.
    pub segment_size: usize,
    /// Additional segment size.
    pub add_segment_size: usize,
    /// rx fifo size.
    pub rx_fifo_size: u32,
    /// tx fifo size.
    pub tx_fifo_size: u32,
    /// Event queue slots.
    pub event_queue_size: u32,
}

impl Default for AppSizeDefaults {
    fn default() -> Self {
        let o = AppOptions::default();
        Self {
            segment_size: o.segment_size,
            add_segment_size: o.add_segment_size,
            rx_fifo_size: o.rx_fifo_size,
            tx_fifo_size: o.tx_fifo_size,
            event_queue_size: o.event_queue_size,
        }
    }
}

impl AppSizeDefaults {
    /// Replaces every size of `o` that is 0 by its default.
    pub fn fill(&self, o: &mut AppOptions) {
        if o.segment_size == 0 {
            o.segment_size = self.segment_size;
        }
        if o.add_segment_size == 0 {
            o.add_segment_size = self.add_segment_size;
        }
        if o.rx_fifo_size == 0 {
            o.rx_fifo_size = self.rx_fifo_size;
        }
        if o.tx_fifo_size == 0 {
            o.tx_fifo_size = self.tx_fifo_size;
        }
        if o.event_queue_size == 0 {
            o.event_queue_size = self.event_queue_size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_scope_flag_means_global_scope() {
        let s = AppOptions::default().validate().unwrap();
        assert_eq!(
            s,
            AppScope {
                local: false,
                global: true
            }
        );
        let s = AppOptions {
            scope_local: true,
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(
            s,
            AppScope {
                local: true,
                global: false
            }
        );
    }

    #[test]
    fn prealloc_pairs_with_prealloc_headers_is_unsupported_config() {
        let o = AppOptions {
            prealloc_fifo_pairs: 4,
            prealloc_fifo_headers: 4,
            ..Default::default()
        };
        assert!(matches!(
            o.validate(),
            Err(SessionError::UnsupportedConfig(_))
        ));
    }

    #[test]
    fn eventfd_without_memfd_segments_is_unsupported_config() {
        let o = AppOptions {
            use_eventfd: true,
            segment_kind: SegmentKind::Private,
            ..Default::default()
        };
        assert!(matches!(
            o.validate(),
            Err(SessionError::UnsupportedConfig(_))
        ));
        let o = AppOptions {
            use_eventfd: true,
            ..Default::default()
        };
        assert!(o.validate().is_ok());
    }

    #[test]
    fn bad_watermarks_and_percentages_are_invalid_value() {
        let o = AppOptions {
            low_watermark: 90,
            high_watermark: 10,
            ..Default::default()
        };
        assert!(matches!(o.validate(), Err(SessionError::InvalidValue(_))));
        let o = AppOptions {
            pct_first_alloc: 0,
            ..Default::default()
        };
        assert!(matches!(o.validate(), Err(SessionError::InvalidValue(_))));
    }

    #[test]
    fn size_defaults_fill_only_the_sizes_an_app_left_at_zero() {
        let d = AppSizeDefaults {
            segment_size: 8 << 20,
            add_segment_size: 4 << 20,
            rx_fifo_size: 128 << 10,
            tx_fifo_size: 256 << 10,
            event_queue_size: 512,
        };
        let mut o = AppOptions {
            segment_size: 0,
            add_segment_size: 0,
            rx_fifo_size: 0,
            tx_fifo_size: 32 << 10,
            event_queue_size: 0,
            ..AppOptions::default()
        };
        d.fill(&mut o);
        assert_eq!(o.segment_size, 8 << 20);
        assert_eq!(o.add_segment_size, 4 << 20);
        assert_eq!(o.rx_fifo_size, 128 << 10);
        assert_eq!(o.tx_fifo_size, 32 << 10, "an explicit size was replaced");
        assert_eq!(o.event_queue_size, 512);
    }
}
