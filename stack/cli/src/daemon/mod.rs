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

pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod run;
pub(crate) mod show;
pub(crate) mod snapshot;

pub(crate) use config::DaemonConfig;
pub(crate) use run::Daemon;
