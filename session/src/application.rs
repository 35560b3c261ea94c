//! Applications: who they are (a builtin name or an api client), the options
//! they attached with, their workers and listeners.
//!
//! The rules of VPP's `vnet_application_attach` apply: attaching a name or
//! client twice is `AlreadyAttached`, neither is `InvalidValue`, prealloc
//! fifo pairs with prealloc fifo headers is `UnsupportedConfig`, eventfd
//! message queues without memfd segments is `UnsupportedConfig`, and no
//! scope flag means global scope.

use std::sync::Arc;

use hashbrown::HashMap;

use crate::app_callbacks::AppCallbacks;
use hoststack_app_proto::endpoint::{Endpoint, TransportProto};
use hoststack_app_proto::handle::{AppIndex, AppWorkerIndex, NamespaceIndex, WorkerMapIndex};
use hoststack_app_proto::options::{AppOptions, AppScope};

/// Where an application comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AppIdentity {
    /// In-process, by name, with callbacks.
    Builtin(String),
    /// A separate process attached over the app socket, by api client index.
    External {
        /// Client index the app socket assigned.
        client: u32,
        /// The name it gave.
        name: String,
    },
}

impl AppIdentity {
    /// The app's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Builtin(n) | Self::External { name: n, .. } => n,
        }
    }
}

/// An attached application.
#[derive(Debug)]
pub struct Application {
    /// Its index.
    pub index: AppIndex,
    /// Builtin name or api client.
    pub identity: AppIdentity,
    /// Options it attached with.
    pub options: AppOptions,
    /// Derived scope.
    pub scope: AppScope,
    /// Its namespace.
    pub namespace: NamespaceIndex,
    /// Builtin callbacks (None for external apps).
    pub callbacks: Option<Arc<AppCallbacks>>,
    /// Worker map: map index -> app worker.
    pub workers: HashMap<WorkerMapIndex, AppWorkerIndex>,
    /// Its listeners by (proto, endpoint).
    pub listeners: HashMap<(TransportProto, Endpoint), u32>,
    /// Next worker map index to hand out.
    pub next_map_index: u32,
    /// Set once detach started; sessions are being torn down.
    pub detaching: bool,
    /// What an external app needs beyond its workers: its rx queues.
    pub external: Option<ExternalParts>,
    /// The secret a forked child of an external app presents to join it
    /// as a worker over its own connection (random, never 0 for external
    /// apps; 0 for builtin apps, which cannot be joined).
    pub share_token: u64,
    /// The process that attached it over an app socket, as the kernel
    /// vouched for it at connect (SO_PEERCRED); `None` for builtin apps.
    pub peer: Option<PeerCred>,
}

/// Who is at the other end of an app socket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// An external app's app -> stack queues, kept until the app socket hands
/// them out.
#[derive(Debug)]
pub struct ExternalParts {
    /// Where the queues are, for the attach reply.
    pub rx_info: hoststack_app_proto::app_rx_queue::RxQueuesInfo,
    /// The queues' segment (its fd goes to the app); none when the layer
    /// gives apps no private rx queues.
    pub rx_segment: Option<hoststack_shm::segment::Segment>,
    /// Another handle on each queue, in thread order: their eventfds go to
    /// the app, and `show app mq` reads their fill from them.
    pub rx_watch: Vec<hoststack_app_proto::app_rx_queue::AppRxQueue>,
    /// The main thread's queue, until the app socket server takes it.
    pub main_queue: Option<hoststack_app_proto::app_rx_queue::AppRxQueue>,
}

impl Application {
    /// The app's name.
    pub fn name(&self) -> &str {
        self.identity.name()
    }

    /// True for builtin apps.
    pub fn is_builtin(&self) -> bool {
        matches!(self.identity, AppIdentity::Builtin(_))
    }
}
