//! Shared helpers for hoststack's integration tests (network namespaces,
//! veth pairs, kernel-side peers).
