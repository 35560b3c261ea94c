//! The hoststack daemon: `hoststack run --config FILE`, and the CLI that
//! talks to it.
//!
//! - [`config`]: the TOML file, checked into a [`config::DaemonConfig`].
//! - [`run`]: the daemon's lifecycle ([`run::Daemon`]) and the requests it
//!   answers.
//! - [`control`]: the control socket's protocol, server and client.
//! - [`show`]: the `show` grammar, views and text tables (no I/O).
//! - [`snapshot`]: views built from a running stack.
//! - [`metrics`]: Prometheus text and the `GET /metrics` responder.
//! - [`lock`]: one daemon per interface.

pub mod config;
pub mod control;
pub mod lock;
pub mod metrics;
pub mod run;
pub mod show;
pub mod snapshot;

pub use config::{ConfigError, DaemonConfig};
pub use run::Daemon;
