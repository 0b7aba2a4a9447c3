//! Running a chain: [`chain`] walks the stages, [`stage`] runs one stage's filters
//! concurrently and applies its aggregator and rules, [`filter`] makes one guarded
//! filter call. Each level calls only the next one down.

pub mod chain;
pub mod filter;
pub mod stage;

pub use chain::{Item, Runner};
