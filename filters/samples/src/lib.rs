//! Sample filters shipped in the `sekisho` binary: `noop` (answers what its config says;
//! for benchmarks and tests) and `keywords` (a text filter over a word list).

mod keywords;
mod noop;

pub use keywords::{Keywords, KeywordsConfig};
pub use noop::{Noop, NoopConfig};
