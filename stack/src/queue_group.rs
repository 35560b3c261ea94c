//! What the workers of one interface share: the neighbour table, the
//! directory of which worker holds which TCP flow, the hand-off rings
//! between them, and the TCP secret (so a SYN cookie or ISN made on one
//! queue checks out on another).
//!
//! A worker's part of it is a [`QueueShare`]: the group and the worker's
//! position in it (its queue's index among the interface's served queues).

use std::sync::Arc;

use hoststack_drivers::rss::Rss;

use crate::flow_directory::FlowDirectory;
use crate::handoff::{HandOff, HandOffCounters, HandOffPort};
use crate::neighbors::SharedNeighbors;

/// The shared state of one interface's workers.
#[derive(Debug)]
pub struct QueueGroup {
    /// The interface.
    pub interface: String,
    /// Next hops' Ethernet addresses, learned by any worker.
    pub neighbors: Arc<SharedNeighbors>,
    /// TCP flows by owner.
    pub directory: FlowDirectory,
    /// The rings between the workers.
    pub handoff: HandOff,
    /// The TCP engines' secret (ISNs, SYN cookies, port offsets).
    pub tcp_secret: u128,
    /// The NIC's Toeplitz RSS, when it can be read: connects then pick
    /// ports whose replies land on their own worker's queue.
    pub rss: Option<Rss>,
}

impl QueueGroup {
    /// A group of `ports.len()` workers on `interface`, whose NIC hashes
    /// flows to queues with `rss` when known.
    pub fn new(
        interface: &str,
        ports: Vec<HandOffPort>,
        tcp_secret: u128,
        rss: Option<Rss>,
    ) -> Arc<Self> {
        Arc::new(Self {
            interface: interface.into(),
            neighbors: Arc::default(),
            directory: FlowDirectory::new(),
            handoff: HandOff::new(ports),
            tcp_secret,
            rss,
        })
    }

    /// Workers in the group.
    pub fn workers(&self) -> usize {
        self.handoff.workers()
    }
}

/// One worker's place in its interface's group.
#[derive(Debug, Clone)]
pub struct QueueShare {
    /// The group.
    pub group: Arc<QueueGroup>,
    /// This worker's position (0..workers).
    pub pos: usize,
}

impl QueueShare {
    /// A group of one, for a stack over one driver queue.
    pub fn single(interface: &str, tcp_secret: u128) -> Self {
        Self {
            group: QueueGroup::new(
                interface,
                vec![HandOffPort {
                    wake: Arc::new(|| {}),
                    counters: Arc::new(HandOffCounters::default()),
                }],
                tcp_secret,
                None,
            ),
            pos: 0,
        }
    }

    /// Whether other workers share the interface.
    pub fn is_shared(&self) -> bool {
        self.group.workers() > 1
    }

    /// This worker's hand-off counters.
    pub fn counters(&self) -> &HandOffCounters {
        self.group.handoff.counters(self.pos)
    }
}
