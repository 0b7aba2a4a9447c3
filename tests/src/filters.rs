//! Filters built to make one behaviour observable without timing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict, proto};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Empty {}

/// Answers only once `n` calls are waiting at once: a stage whose filters ran one after
/// another would never get there, and every call would fail.
pub struct Barrier {
    pub name: String,
    pub barrier: Arc<tokio::sync::Barrier>,
}

impl Barrier {
    pub fn new(name: &str, n: usize) -> Self {
        Barrier {
            name: name.into(),
            barrier: Arc::new(tokio::sync::Barrier::new(n)),
        }
    }
}

#[async_trait]
impl Filter for Barrier {
    type Config = Empty;
    fn name(&self) -> &str {
        &self.name
    }
    fn content_types(&self) -> Vec<String> {
        vec!["*/*".into()]
    }
    async fn apply(&self, _: Input, _: Empty) -> Result<Verdict, FilterError> {
        match tokio::time::timeout(Duration::from_secs(20), self.barrier.wait()).await {
            Ok(_) => Ok(Verdict::score(0.0)),
            Err(_) => Err(FilterError::InvalidInput(
                "the other calls never came".into(),
            )),
        }
    }
}

/// Fails with a code for the first `fails` calls, then answers 0.
pub struct Flaky {
    pub name: String,
    pub fails: u32,
    pub unavailable: bool,
    pub calls: Arc<AtomicU32>,
}

#[async_trait]
impl Filter for Flaky {
    type Config = Empty;
    fn name(&self) -> &str {
        &self.name
    }
    fn content_types(&self) -> Vec<String> {
        vec!["*/*".into()]
    }
    async fn apply(&self, _: Input, _: Empty) -> Result<Verdict, FilterError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fails {
            return Err(if self.unavailable {
                FilterError::Unavailable(format!("failing on purpose ({})", n + 1))
            } else {
                FilterError::InvalidInput(format!("failing on purpose ({})", n + 1))
            });
        }
        Ok(Verdict::score(0.0))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    pub threshold: f64,
    pub tag: String,
}

/// Reports what reached it: its config, the content type, earlier stages' regions and
/// what was left of the call's deadline.
pub struct Echo {
    pub name: String,
}

#[async_trait]
impl Filter for Echo {
    type Config = EchoConfig;
    fn name(&self) -> &str {
        &self.name
    }
    fn content_types(&self) -> Vec<String> {
        vec!["text/*".into()]
    }
    async fn apply(&self, input: Input, c: EchoConfig) -> Result<Verdict, FilterError> {
        let regions: usize = input
            .context
            .stages
            .iter()
            .flat_map(|s| &s.filters)
            .map(|f| f.regions.len())
            .sum();
        let mut labels = BTreeMap::new();
        labels.insert("threshold".to_owned(), c.threshold);
        labels.insert("earlier_regions".to_owned(), regions as f64);
        labels.insert(
            "earlier_stages".to_owned(),
            input.context.stages.len() as f64,
        );
        // What the SDK says is left of the call's deadline (its grpc-timeout); -1: none.
        let left = sekisho_filter_sdk::deadline().map_or(-1.0, |d| {
            d.saturating_duration_since(std::time::Instant::now())
                .as_secs_f64()
                * 1e3
        });
        labels.insert("deadline_left_ms".to_owned(), left);
        let mut v = Verdict::score(0.0)
            .details(serde_json::json!({ "tag": c.tag, "alias": input.context.alias }));
        v.labels = labels;
        Ok(v)
    }
}

/// Finds one region in every item.
pub struct Boxes;

#[async_trait]
impl Filter for Boxes {
    type Config = Empty;
    fn name(&self) -> &str {
        "boxes"
    }
    fn content_types(&self) -> Vec<String> {
        vec!["*/*".into()]
    }
    async fn apply(&self, _: Input, _: Empty) -> Result<Verdict, FilterError> {
        Ok(Verdict::score(0.2).region(proto::Region {
            x: 1.0,
            y: 2.0,
            width: 10.0,
            height: 20.0,
            score: 0.9,
            label: "face".into(),
            landmarks: vec![],
        }))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct AnswersConfig {
    /// How the verdict is broken: `nan_label`, `infinite_label`, `many_labels`,
    /// `many_regions`, `nan_region`; anything else, not at all.
    pub broken: String,
}

/// Answers a verdict with label `bad` at 0 (and score 0), broken as its config says: a
/// filter written elsewhere, and wrongly, as the gateway must expect.
pub struct Answers;

#[async_trait]
impl Filter for Answers {
    type Config = AnswersConfig;
    fn name(&self) -> &str {
        "answers"
    }
    fn content_types(&self) -> Vec<String> {
        vec!["*/*".into()]
    }
    async fn apply(&self, _: Input, c: AnswersConfig) -> Result<Verdict, FilterError> {
        let region = |x: f32| proto::Region {
            x,
            y: 0.0,
            width: 1.0,
            height: 1.0,
            score: 0.5,
            label: "thing".into(),
            landmarks: vec![],
        };
        let mut v = Verdict::score(0.0).label("bad", 0.0);
        match c.broken.as_str() {
            "nan_label" => v = v.label("bad", f64::NAN),
            "infinite_label" => v = v.label("bad", f64::NEG_INFINITY),
            "many_labels" => {
                for i in 0..300 {
                    v = v.label(format!("class_{i}"), 0.0);
                }
            }
            "many_regions" => {
                for i in 0..5000 {
                    v = v.region(region(i as f32));
                }
            }
            "nan_region" => v = v.region(region(f32::NAN)),
            _ => {}
        }
        Ok(v)
    }
}
