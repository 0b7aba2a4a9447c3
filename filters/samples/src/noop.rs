//! `noop`: scores every item with the score its config names, after an optional delay.
//! It does no work, so benchmarks through it measure the gateway, not a model.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NoopConfig {
    /// The score to answer, in [0, 1].
    pub score: f64,
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Labels to answer.
    pub labels: BTreeMap<String, f64>,
}

/// A filter that answers its config. `name` lets one process serve several under
/// different names; the other fields shape one replica for tests and benchmarks of
/// balancing (a slow replica, a failing one, one of another version).
#[derive(Debug, Clone)]
pub struct Noop {
    pub name: String,
    /// Added to every call, whatever the config says.
    pub extra_delay: Duration,
    /// Every call before this instant fails with UNAVAILABLE.
    pub fail_until: Option<std::time::Instant>,
    /// The version `Describe` reports.
    pub version: String,
}

impl Noop {
    pub fn named(name: impl Into<String>) -> Self {
        Noop {
            name: name.into(),
            ..Noop::default()
        }
    }
}

impl Default for Noop {
    fn default() -> Self {
        Noop {
            name: "noop".into(),
            extra_delay: Duration::ZERO,
            fail_until: None,
            version: "0.1.0".into(),
        }
    }
}

#[async_trait]
impl Filter for Noop {
    type Config = NoopConfig;

    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn content_types(&self) -> Vec<String> {
        vec!["*/*".into()]
    }

    async fn apply(&self, _input: Input, config: NoopConfig) -> Result<Verdict, FilterError> {
        if !(0.0..=1.0).contains(&config.score) {
            return Err(FilterError::InvalidInput(
                "config: score must be between 0 and 1".into(),
            ));
        }
        if self
            .fail_until
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return Err(FilterError::Unavailable(
                "this replica is set to fail for now (--fail-for)".into(),
            ));
        }
        let delay = Duration::from_millis(config.delay_ms.min(60_000)) + self.extra_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut v = Verdict::score(config.score);
        v.labels = config.labels;
        Ok(v)
    }
}
