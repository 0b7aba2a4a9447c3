//! The chain document as typed structs. Unknown fields are rejected, never dropped, and
//! every default is written down here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A named chain: stages run in order, the filters of a stage in parallel.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Content types the chain accepts (`image/*` wildcards allowed).
    pub content_types: Vec<String>,
    /// Policy for every filter of the chain, unless the filter overrides it.
    #[serde(default)]
    pub defaults: Policy,
    /// Share of APPROVE decisions marked for a human spot check, in [0, 1].
    #[serde(default)]
    pub audit_sample_rate: f64,
    pub stages: Vec<StageSpec>,
    /// The decision when the last stage ends with no rule firing. REVIEW unless given:
    /// precision first.
    #[serde(default = "Decision::review")]
    pub default_decision: Decision,
}

/// One stage: filters run concurrently, an aggregator makes one score, rules pick what next.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub id: String,
    pub filters: Vec<FilterRef>,
    #[serde(default)]
    pub aggregate: AggregateSpec,
    #[serde(default)]
    pub branches: Vec<BranchSpec>,
}

/// A filter used in a stage, under an alias, with its config and policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRef {
    /// The filter's name as discovery knows it.
    #[serde(rename = "use")]
    pub filter: String,
    /// The name rules use (`filters.<alias>`); the filter's name when absent.
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Overrides of the filter's default config, sent with every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Run and report, never count: for candidate models.
    #[serde(default)]
    pub shadow: bool,
    /// Overrides the chain's `defaults.timeout` for this filter.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

impl FilterRef {
    /// The alias rules and traces use.
    pub fn alias(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.filter)
    }

    /// This filter's own policy fields (unset ones fall back to the chain's defaults).
    pub fn policy(&self) -> Policy {
        Policy {
            timeout: self.timeout,
            retries: self.retries,
            backoff: self.backoff,
            on_error: self.on_error,
        }
    }
}

/// How a filter call is guarded. Every field is optional so that a filter's policy can
/// override the chain's `defaults` field by field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Budget for the whole call, retries included. Default 800ms.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retries after the first attempt, on retryable codes only. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// First backoff before a retry; doubles each time, with jitter. Default 20ms.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff: Option<Duration>,
    /// What a failure means. Default `review`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
}

impl Policy {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(800);
    pub const DEFAULT_RETRIES: u32 = 1;
    pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(20);

    /// This policy with every unset field taken from `defaults`.
    pub fn or(&self, defaults: &Policy) -> Policy {
        Policy {
            timeout: self.timeout.or(defaults.timeout),
            retries: self.retries.or(defaults.retries),
            backoff: self.backoff.or(defaults.backoff),
            on_error: self.on_error.or(defaults.on_error),
        }
    }
}

/// What a filter's failure (after its retries) means for the item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// The chain ends in REVIEW: a broken filter never auto-approves.
    #[default]
    Review,
    /// The filter is left out of the stage.
    Skip,
    /// This score counts in the filter's place.
    Score(f64),
    /// The whole call fails with the filter's error.
    Fail,
}

impl<'de> Deserialize<'de> for OnError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnError;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`review`, `skip`, `fail` or `{score: <0..1>}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OnError, E> {
                match v {
                    "review" => Ok(OnError::Review),
                    "skip" => Ok(OnError::Skip),
                    "fail" => Ok(OnError::Fail),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OnError, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Score {
                    score: f64,
                }
                let s = Score::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(OnError::Score(s.score))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a stage's filter scores become one score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AggregateSpec {
    /// `min`, `max`, `mean`, `weighted_mean` (with weights) or `vote` (with k).
    Builtin {
        name: String,
        weights: BTreeMap<String, f64>,
        k: Option<u32>,
        threshold: Option<f64>,
    },
    /// An aggregator registered in code under this name.
    Custom {
        name: String,
        config: Option<serde_json::Value>,
    },
    /// A remote `sekisho.aggregator.v1.Aggregator` service configured under this name.
    Remote {
        name: String,
        config: Option<serde_json::Value>,
    },
}

impl Default for AggregateSpec {
    fn default() -> Self {
        AggregateSpec::builtin("max")
    }
}

impl AggregateSpec {
    pub fn builtin(name: &str) -> Self {
        AggregateSpec::Builtin {
            name: name.to_owned(),
            weights: BTreeMap::new(),
            k: None,
            threshold: None,
        }
    }

    /// A short name for traces and metrics.
    pub fn label(&self) -> String {
        match self {
            AggregateSpec::Builtin { name, .. } => name.clone(),
            AggregateSpec::Custom { name, .. } => format!("custom:{name}"),
            AggregateSpec::Remote { name, .. } => format!("remote:{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for AggregateSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            builtin: Option<String>,
            custom: Option<String>,
            remote: Option<String>,
            #[serde(default)]
            weights: BTreeMap<String, f64>,
            k: Option<u32>,
            threshold: Option<f64>,
            config: Option<serde_json::Value>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AggregateSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an aggregator name (`max`) or a map with one of `builtin`, `custom`, `remote`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AggregateSpec, E> {
                Ok(AggregateSpec::builtin(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AggregateSpec, A::Error> {
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let kinds = [&f.builtin, &f.custom, &f.remote]
                    .iter()
                    .filter(|k| k.is_some())
                    .count();
                if kinds != 1 {
                    return Err(de::Error::custom(
                        "aggregate: give exactly one of `builtin`, `custom` or `remote`",
                    ));
                }
                let builtin_only = !f.weights.is_empty() || f.k.is_some() || f.threshold.is_some();
                if f.builtin.is_none() && builtin_only {
                    return Err(de::Error::custom(
                        "aggregate: `weights`, `k` and `threshold` go with `builtin` only",
                    ));
                }
                Ok(if let Some(name) = f.builtin {
                    if f.config.is_some() {
                        return Err(de::Error::custom(
                            "aggregate: `config` goes with `custom` or `remote` only",
                        ));
                    }
                    AggregateSpec::Builtin {
                        name,
                        weights: f.weights,
                        k: f.k,
                        threshold: f.threshold,
                    }
                } else if let Some(name) = f.custom {
                    AggregateSpec::Custom {
                        name,
                        config: f.config,
                    }
                } else {
                    AggregateSpec::Remote {
                        name: f.remote.unwrap_or_default(),
                        config: f.config,
                    }
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A branch rule: when the CEL expression holds, go to a later stage or decide.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    pub when: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decide: Option<DecideSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecideSpec {
    pub decision: Decision,
    pub reason: String,
}

/// The three answers Sekisho gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Decision {
    Approve,
    Reject,
    Review,
}

impl Decision {
    fn review() -> Self {
        Decision::Review
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Approve => "APPROVE",
            Decision::Reject => "REJECT",
            Decision::Review => "REVIEW",
        }
    }
}
