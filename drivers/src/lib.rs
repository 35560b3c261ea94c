//! hoststack's drivers.
