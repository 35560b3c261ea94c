//! hoststack benchmarks.
fn main() {}
