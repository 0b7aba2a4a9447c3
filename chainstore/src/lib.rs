//! Chains: the chain document (what operators write), its parsing with line and column,
//! its validation with a path for every problem, and loading chains from a directory.
//!
//! The gateway compiles a validated [`ChainSpec`] into something it can run; the
//! chainstore service ([`service`], [`store`], [`server`]) stores and versions the same
//! documents, checking filters against discovery ([`catalog`]) on every write.

mod dir;
mod parse;
mod spec;
mod validate;

pub use dir::{FileProblem, LoadedChain, load_dir};
pub use parse::{ParseError, parse_chain};
pub use spec::{
    AggregateSpec, BranchSpec, ChainSpec, DecideSpec, Decision, FilterRef, OnError, Policy,
    StageSpec,
};
pub use validate::{
    Limits, MAX_METADATA_ENTRIES, MAX_VERDICT_LABELS, Problem, RULE_VARIABLES, compile_rule,
    rule_cost, validate,
};

pub mod catalog;
pub mod server;
pub mod service;
pub mod store;
