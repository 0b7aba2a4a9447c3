//! Write a Sekisho filter in Rust: implement [`Filter`] (usually only `name`,
//! `content_types` and `apply`) and hand it to [`FilterServer`]. The SDK answers
//! `Describe` from the trait, checks the content type, merges the chain's config over the
//! filter's defaults into a typed config, and serves health checking and reflection.
//!
//! The proto in `proto/sekisho/filter/v1` is the whole contract: a filter in another
//! language implements the same service (see `filters/examples/python`).

mod config;
pub mod metrics;
mod register;
mod server;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use register::EtcdRegistration;
pub use sekisho_proto::filter::v1 as proto;
pub use server::{FilterServer, ServeError};

tokio::task_local! {
    static DEADLINE: Option<std::time::Instant>;
}

/// The deadline of the `Apply` call being served, from its caller's `grpc-timeout` (the
/// gateway sends what is left of its own), when it gave one. Read inside
/// [`Filter::apply`] (in its task, not in tasks it spawns); `None` elsewhere. A filter
/// with a queue can refuse work it would finish too late, rather than do it for nobody.
pub fn deadline() -> Option<std::time::Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// Runs `f` with `deadline` as what [`deadline`] returns (the server does this for each
/// `Apply` call; tests and in-process callers may too).
pub async fn with_deadline<T>(
    deadline: Option<std::time::Instant>,
    f: impl std::future::Future<Output = T>,
) -> T {
    DEADLINE.scope(deadline, f).await
}

/// The item a filter scores.
#[derive(Debug, Clone)]
pub enum Payload {
    Data(Bytes),
    Text(String),
    Features(Vec<f32>),
}

/// One `Apply` call, as a filter sees it.
#[derive(Debug, Clone)]
pub struct Input {
    pub content_type: String,
    pub payload: Payload,
    /// The chain, stage, alias, metadata and earlier stages' results.
    pub context: proto::FilterContext,
}

impl Input {
    /// The text payload, or an `InvalidInput` error naming what was sent instead.
    pub fn text(&self) -> Result<&str, FilterError> {
        match &self.payload {
            Payload::Text(t) => Ok(t),
            Payload::Data(d) => std::str::from_utf8(d)
                .map_err(|_| FilterError::InvalidInput("the data is not UTF-8 text".into())),
            Payload::Features(_) => Err(FilterError::InvalidInput(
                "expected text, got a feature vector".into(),
            )),
        }
    }
}

/// A filter's answer: a score in [0, 1] (higher = more likely NG), labels and regions.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub score: f64,
    pub labels: BTreeMap<String, f64>,
    pub regions: Vec<proto::Region>,
    pub details: Option<serde_json::Value>,
}

impl Verdict {
    pub fn score(score: f64) -> Self {
        Verdict {
            score,
            ..Default::default()
        }
    }

    pub fn label(mut self, name: impl Into<String>, value: f64) -> Self {
        self.labels.insert(name.into(), value);
        self
    }

    pub fn region(mut self, region: proto::Region) -> Self {
        self.regions.push(region);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// Why a filter could not score an item. Mapped to a gRPC status in one place
/// ([`FilterError::into_status`]); only `Unavailable` is worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The item or config is wrong: retrying will not help.
    #[error("{0}")]
    InvalidInput(String),
    /// The filter cannot serve now (a dependency away, stopping): retry may help.
    #[error("{0}")]
    Unavailable(String),
    /// The filter is shedding load (its queue is full, or too long for the call's
    /// deadline): RESOURCE_EXHAUSTED. Retrying another replica may help; the gateway does
    /// not count it against the endpoint's health, since it is busy, not broken. With
    /// `retry_after` (when a call like it should be taken: not when the whole queue is
    /// done, or callers that wait that long leave the filter idle), the status carries
    /// it as `grpc-retry-pushback-ms`: gRPC clients with a retry policy wait that long before
    /// trying this server again, and a gateway with `outlier.max_rest` set sends its new
    /// calls to other replicas meanwhile.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Option<std::time::Duration>,
    },
    /// A bug or a broken model.
    #[error("{0}")]
    Internal(String),
}

impl FilterError {
    pub fn into_status(self) -> tonic::Status {
        match self {
            FilterError::InvalidInput(m) => tonic::Status::invalid_argument(m),
            FilterError::Unavailable(m) => tonic::Status::unavailable(m),
            FilterError::Overloaded {
                message,
                retry_after,
            } => {
                let status = tonic::Status::resource_exhausted(message);
                match retry_after {
                    Some(after) => sekisho_proto::with_retry_pushback(status, after),
                    None => status,
                }
            }
            FilterError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// A moderation filter. Implement `name`, `content_types` and `apply`; the rest has
/// defaults. `Config` is what chains may set per call: its JSON Schema goes into the
/// descriptor, its `Default` is the filter's default config, and unknown fields are
/// refused when it says `#[serde(deny_unknown_fields)]`.
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    type Config: DeserializeOwned + Serialize + JsonSchema + Default + Clone + Send + Sync;

    /// The name chains use (`use: <name>`).
    fn name(&self) -> &str;

    fn version(&self) -> &str {
        "0.1.0"
    }

    /// Accepted content types; `image/*` wildcards allowed.
    fn content_types(&self) -> Vec<String>;

    /// Label names `apply` may emit.
    fn labels(&self) -> Vec<String> {
        Vec::new()
    }

    fn max_batch_size(&self) -> u32 {
        1
    }

    /// Free-form facts for `Describe`, e.g. the execution provider.
    fn info(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Scores one item.
    async fn apply(&self, input: Input, config: Self::Config) -> Result<Verdict, FilterError>;

    /// The descriptor `Describe` returns: [`descriptor`], built from the methods above.
    fn describe(&self) -> proto::FilterDescriptor {
        descriptor(self)
    }
}

/// A filter's descriptor built from its methods and its `Config`'s schema and default;
/// a filter that overrides [`Filter::describe`] (to narrow its schema to what this
/// process allows, say) starts from it.
pub fn descriptor<F: Filter + ?Sized>(f: &F) -> proto::FilterDescriptor {
    let schema = schemars::schema_for!(F::Config);
    proto::FilterDescriptor {
        name: f.name().to_owned(),
        version: f.version().to_owned(),
        content_types: f.content_types(),
        config_schema: serde_json::to_string(&schema).unwrap_or_default(),
        labels: f.labels(),
        max_batch_size: f.max_batch_size(),
        info: f.info().into_iter().collect(),
        default_config: serde_json::to_string(&F::Config::default()).unwrap_or_default(),
    }
}
