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
/// different names.
#[derive(Debug, Clone)]
pub struct Noop {
    pub name: String,
}

impl Default for Noop {
    fn default() -> Self {
        Noop {
            name: "noop".into(),
        }
    }
}

#[async_trait]
impl Filter for Noop {
    type Config = NoopConfig;

    fn name(&self) -> &str {
        &self.name
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
        if config.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(config.delay_ms.min(60_000))).await;
        }
        let mut v = Verdict::score(config.score);
        v.labels = config.labels;
        Ok(v)
    }
}
