//! The gateway: runs an item through a named chain of filter stages and decides APPROVE,
//! REJECT or REVIEW, with every score that led there.
//!
//! One request reads top-down: [`service`] (the gRPC API) → [`runner::chain`] →
//! [`runner::stage`] → [`runner::filter`] → [`registry`] (a [`pool`] per filter, its
//! endpoints found by [`discovery`]) → the filter's gRPC service. The cross-cutting guards of a filter call
//! (timeout, retry, metrics) are tower layers composed in [`layers`].
//!
//! The gateway never decodes an image and never logs one.

pub mod aggregate;
pub mod callers;
pub mod chain;
pub mod config;
pub mod discovery;
pub mod error;
pub mod follow;
pub mod layers;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod rules;
pub mod runner;
pub mod server;
pub mod service;

pub use config::GatewayConfig;
pub use error::GatewayError;
pub use server::{GatewayServer, RunningGateway};
