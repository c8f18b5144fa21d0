//! The Rust client library for Scribe (being written).
