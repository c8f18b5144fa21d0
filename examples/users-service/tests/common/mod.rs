//! The shared test support (`scribe-testkit`).

#![allow(unused_imports)]

pub use scribe_testkit::*;
