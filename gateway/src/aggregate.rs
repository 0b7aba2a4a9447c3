//! Aggregators turn a stage's counted filter scores into one stage score: the built-in
//! min, max, mean, weighted mean and k-of-n vote; custom ones registered in code; and
//! remote `sekisho.aggregator.v1.Aggregator` services.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sekisho_chainstore::AggregateSpec;
use sekisho_proto::aggregator::v1 as proto;
use tonic::transport::Channel;

/// One counted filter result, as an aggregator sees it.
#[derive(Debug, Clone)]
pub struct AggregateInput<'a> {
    pub alias: &'a str,
    pub filter: &'a str,
    pub score: f64,
    pub labels: &'a HashMap<String, f64>,
}

/// Where an aggregation runs, for remote aggregators and error messages.
#[derive(Debug, Clone)]
pub struct StageRef<'a> {
    pub chain: &'a str,
    pub stage: &'a str,
}

/// Turns scores into one score. Never called with an empty input.
#[async_trait]
pub trait Aggregator: Send + Sync + 'static {
    async fn aggregate(
        &self,
        at: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String>;
}

/// Builds a custom aggregator from the `config` a chain gives it.
pub type AggregatorFactory =
    Arc<dyn Fn(Option<&serde_json::Value>) -> Result<Arc<dyn Aggregator>, String> + Send + Sync>;

struct Min;
struct Max;
struct Mean;
struct WeightedMean(BTreeMap<String, f64>);
struct Vote {
    k: u32,
    threshold: f64,
}

#[async_trait]
impl Aggregator for Min {
    async fn aggregate(
        &self,
        _: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        Ok(inputs.iter().map(|i| i.score).fold(f64::INFINITY, f64::min))
    }
}

#[async_trait]
impl Aggregator for Max {
    async fn aggregate(
        &self,
        _: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        Ok(inputs
            .iter()
            .map(|i| i.score)
            .fold(f64::NEG_INFINITY, f64::max))
    }
}

#[async_trait]
impl Aggregator for Mean {
    async fn aggregate(
        &self,
        _: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        Ok(inputs.iter().map(|i| i.score).sum::<f64>() / inputs.len() as f64)
    }
}

#[async_trait]
impl Aggregator for WeightedMean {
    /// Filters without a weight weigh 1; skipped filters drop out of both sums.
    async fn aggregate(
        &self,
        _: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        let (mut num, mut den) = (0.0, 0.0);
        for i in inputs {
            let w = self.0.get(i.alias).copied().unwrap_or(1.0);
            num += w * i.score;
            den += w;
        }
        if den == 0.0 {
            return Err("every counted filter has weight 0".into());
        }
        Ok(num / den)
    }
}

#[async_trait]
impl Aggregator for Vote {
    /// 1 when at least k filters score at or above the threshold, else 0.
    async fn aggregate(
        &self,
        _: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        let votes = inputs.iter().filter(|i| i.score >= self.threshold).count();
        Ok(if votes >= self.k as usize { 1.0 } else { 0.0 })
    }
}

/// Calls a remote aggregator service.
struct Remote {
    client: proto::aggregator_client::AggregatorClient<Channel>,
    config: Option<prost_types::Struct>,
    timeout: Duration,
}

#[async_trait]
impl Aggregator for Remote {
    async fn aggregate(
        &self,
        at: StageRef<'_>,
        inputs: &[AggregateInput<'_>],
    ) -> Result<f64, String> {
        let mut req = tonic::Request::new(proto::AggregateRequest {
            chain: at.chain.to_owned(),
            stage: at.stage.to_owned(),
            inputs: inputs
                .iter()
                .map(|i| proto::AggregateInput {
                    alias: i.alias.to_owned(),
                    filter: i.filter.to_owned(),
                    score: i.score,
                    labels: i.labels.clone(),
                })
                .collect(),
            config: self.config.clone(),
        });
        req.set_timeout(self.timeout);
        let score = tokio::time::timeout(self.timeout, self.client.clone().aggregate(req))
            .await
            .map_err(|_| format!("remote aggregator did not answer within {:?}", self.timeout))?
            .map_err(|s| format!("remote aggregator: {}", s.message()))?
            .into_inner()
            .score;
        if !(0.0..=1.0).contains(&score) {
            return Err(format!(
                "remote aggregator answered {score}, outside [0, 1]"
            ));
        }
        Ok(score)
    }
}

/// Custom and remote aggregators known to this gateway, and how to build any aggregator
/// from a chain's `aggregate` spec.
#[derive(Clone, Default)]
pub struct AggregatorRegistry {
    custom: HashMap<String, AggregatorFactory>,
    remote: HashMap<String, (Channel, Duration)>,
}

impl AggregatorRegistry {
    /// Registers a custom aggregator written in Rust, used as `aggregate: {custom: name}`.
    pub fn register_custom(&mut self, name: impl Into<String>, factory: AggregatorFactory) {
        self.custom.insert(name.into(), factory);
    }

    /// Registers a remote aggregator, used as `aggregate: {remote: name}`.
    pub fn register_remote(
        &mut self,
        name: impl Into<String>,
        channel: Channel,
        timeout: Duration,
    ) {
        self.remote.insert(name.into(), (channel, timeout));
    }

    /// Builds the aggregator a stage asks for. Built-ins were checked by validation.
    pub fn build(&self, spec: &AggregateSpec) -> Result<Arc<dyn Aggregator>, String> {
        Ok(match spec {
            AggregateSpec::Builtin {
                name,
                weights,
                k,
                threshold,
            } => match name.as_str() {
                "min" => Arc::new(Min),
                "max" => Arc::new(Max),
                "mean" => Arc::new(Mean),
                "weighted_mean" => Arc::new(WeightedMean(weights.clone())),
                "vote" => Arc::new(Vote {
                    k: k.unwrap_or(1),
                    threshold: threshold.unwrap_or(0.5),
                }),
                other => return Err(format!("unknown aggregator `{other}`")),
            },
            AggregateSpec::Custom { name, config } => {
                let factory = self.custom.get(name).ok_or_else(|| {
                    format!(
                        "no custom aggregator `{name}` is registered; registered: {}",
                        names(self.custom.keys())
                    )
                })?;
                factory(config.as_ref())?
            }
            AggregateSpec::Remote { name, config } => {
                let (channel, timeout) = self.remote.get(name).ok_or_else(|| {
                    format!(
                        "no remote aggregator `{name}` is configured; configured: {}",
                        names(self.remote.keys())
                    )
                })?;
                Arc::new(Remote {
                    client: proto::aggregator_client::AggregatorClient::new(channel.clone()),
                    config: config.as_ref().and_then(sekisho_proto::json_to_struct),
                    timeout: *timeout,
                })
            }
        })
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let mut v: Vec<&str> = it.map(String::as_str).collect();
    v.sort_unstable();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: AggregateSpec, scores: &[(&str, f64)]) -> f64 {
        let agg = AggregatorRegistry::default().build(&spec).unwrap();
        let labels = HashMap::new();
        let inputs: Vec<_> = scores
            .iter()
            .map(|(a, s)| AggregateInput {
                alias: a,
                filter: a,
                score: *s,
                labels: &labels,
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(agg.aggregate(
            StageRef {
                chain: "c",
                stage: "s",
            },
            &inputs,
        ))
        .unwrap()
    }

    #[test]
    fn builtins_compute_what_they_say() {
        let s = [("a", 0.2), ("b", 0.8), ("c", 0.5)];
        assert_eq!(run(AggregateSpec::builtin("min"), &s), 0.2);
        assert_eq!(run(AggregateSpec::builtin("max"), &s), 0.8);
        assert!((run(AggregateSpec::builtin("mean"), &s) - 0.5).abs() < 1e-12);
        let wm = AggregateSpec::Builtin {
            name: "weighted_mean".into(),
            weights: [("a".to_owned(), 3.0), ("b".to_owned(), 1.0)].into(),
            k: None,
            threshold: None,
        };
        // (3*0.2 + 1*0.8 + 1*0.5) / 5
        assert!((run(wm, &s) - 0.38).abs() < 1e-12);
        let vote = |k| AggregateSpec::Builtin {
            name: "vote".into(),
            weights: BTreeMap::new(),
            k: Some(k),
            threshold: Some(0.5),
        };
        assert_eq!(run(vote(2), &s), 1.0);
        assert_eq!(run(vote(3), &s), 0.0);
    }

    #[test]
    fn unknown_custom_aggregators_name_the_registered_ones() {
        let mut r = AggregatorRegistry::default();
        r.register_custom(
            "median",
            Arc::new(|_| Ok(Arc::new(Max) as Arc<dyn Aggregator>)),
        );
        let err = r
            .build(&AggregateSpec::Custom {
                name: "p90".into(),
                config: None,
            })
            .err()
            .unwrap();
        assert_eq!(
            err,
            "no custom aggregator `p90` is registered; registered: median"
        );
    }
}
