//! Fuzzing for everything in Scribe that decodes untrusted bytes: peer wire messages, log records,
//! segment headers and term history files (and recovery of a log directory of arbitrary files),
//! the PostgreSQL SQL translation and COPY data, and the HTTP JSON request bodies with the
//! validation that follows parsing.
//!
//! It runs on stable Rust: a small seeded mutation fuzzer ([`fuzzer::fuzz`]) drives each
//! [`Target`] from its corpus (`corpus/<target>/`, kept in the repository, plus seeds made by
//! the real encoders), catches panics and writes a crashing input to `crashes/<target>-<hash>`.
//! The `scribe-fuzz` binary runs targets for a time budget and prints what they did; the crate's
//! test runs every target for a few seconds in CI. It owns no decoder: a crash is fixed in the
//! decoder's crate, with the input kept as a regression test there and in the corpus.
//!
//! Modules:
//! - [`targets`]: the targets, their seeds and dictionaries.
//! - [`mutator`]: [`Mutator`], the mutations.
//! - [`fuzzer`]: the loop, the panic capture, crash files and [`fuzzer::Stats`].

pub mod fuzzer;
pub mod mutator;
pub mod targets;

pub use mutator::Mutator;
pub use targets::Target;
