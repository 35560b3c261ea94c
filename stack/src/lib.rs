//! hoststack's stack.
