//! Chains compiled for running: rules compiled, aggregators built, policies resolved,
//! `goto` targets turned into indexes. A request takes one `Arc<CompiledChain>` at its
//! start and runs on that version to its end, whatever is loaded meanwhile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sekisho_chainstore::{ChainSpec, Decision, Limits, OnError, Policy, compile_rule};
use sekisho_proto::gateway::v1 as gproto;

use crate::aggregate::{Aggregator, AggregatorRegistry};
use crate::error::GatewayError;

/// A filter's policy with every default applied.
#[derive(Debug, Clone, Copy)]
pub struct ResolvedPolicy {
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub on_error: OnError,
}

impl ResolvedPolicy {
    fn from(p: &Policy) -> Self {
        ResolvedPolicy {
            timeout: p.timeout.unwrap_or(Policy::DEFAULT_TIMEOUT),
            retries: p.retries.unwrap_or(Policy::DEFAULT_RETRIES),
            backoff: p.backoff.unwrap_or(Policy::DEFAULT_BACKOFF),
            on_error: p.on_error.unwrap_or_default(),
        }
    }
}

pub struct CompiledFilter {
    pub alias: String,
    pub filter: String,
    pub config: Option<prost_types::Struct>,
    pub shadow: bool,
    pub policy: ResolvedPolicy,
}

pub enum Action {
    Goto(usize),
    Decide { decision: Decision, reason: String },
}

pub struct CompiledBranch {
    pub when: String,
    pub program: cel::Program,
    pub action: Action,
}

pub struct CompiledStage {
    pub id: String,
    pub filters: Vec<CompiledFilter>,
    pub aggregator: Arc<dyn Aggregator>,
    pub aggregator_label: String,
    pub branches: Vec<CompiledBranch>,
    /// The rule variables the branches read.
    pub uses: crate::rules::Uses,
    /// The branches' estimated steps, all together (`sekisho_chainstore::rule_cost`).
    pub rules_cost: f64,
}

pub struct CompiledChain {
    pub name: String,
    pub version: u64,
    pub source: String,
    pub content_types: Vec<String>,
    pub stages: Vec<CompiledStage>,
    pub default_decision: Decision,
    pub audit_sample_rate: f64,
}

impl CompiledChain {
    /// Compiles a chain that passed validation.
    pub fn compile(
        spec: &ChainSpec,
        version: u64,
        source: String,
        aggregators: &AggregatorRegistry,
    ) -> Result<Self, String> {
        let index: HashMap<&str, usize> = spec
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let mut stages = Vec::with_capacity(spec.stages.len());
        for (i, s) in spec.stages.iter().enumerate() {
            let filters = s
                .filters
                .iter()
                .map(|f| CompiledFilter {
                    alias: f.alias().to_owned(),
                    filter: f.filter.clone(),
                    config: f.config.as_ref().and_then(sekisho_proto::json_to_struct),
                    shadow: f.shadow,
                    policy: ResolvedPolicy::from(&f.policy().or(&spec.defaults)),
                })
                .collect();
            let aggregator = aggregators
                .build(&s.aggregate)
                .map_err(|e| format!("stages[{i}].aggregate: {e}"))?;
            let mut branches = Vec::with_capacity(s.branches.len());
            for (k, b) in s.branches.iter().enumerate() {
                let program = compile_rule(&b.when)
                    .map_err(|e| format!("stages[{i}].branches[{k}].when: {e}"))?;
                let action = match (&b.goto, &b.decide) {
                    (Some(g), _) => Action::Goto(*index.get(g.as_str()).ok_or_else(|| {
                        format!("stages[{i}].branches[{k}].goto: no stage `{g}`")
                    })?),
                    (None, Some(d)) => Action::Decide {
                        decision: d.decision,
                        reason: d.reason.clone(),
                    },
                    (None, None) => return Err(format!("stages[{i}].branches[{k}]: no action")),
                };
                branches.push(CompiledBranch {
                    when: b.when.clone(),
                    program,
                    action,
                });
            }
            let uses = crate::rules::Uses::of(branches.iter().map(|b| &b.program));
            let rules_cost = branches
                .iter()
                .map(|b| sekisho_chainstore::rule_cost(&b.program))
                .sum();
            stages.push(CompiledStage {
                uses,
                rules_cost,
                id: s.id.clone(),
                filters,
                aggregator,
                aggregator_label: s.aggregate.label(),
                branches,
            });
        }
        Ok(CompiledChain {
            name: spec.name.clone(),
            version,
            source,
            content_types: spec.content_types.clone(),
            stages,
            default_decision: spec.default_decision,
            audit_sample_rate: spec.audit_sample_rate,
        })
    }

    pub fn accepts(&self, content_type: &str) -> bool {
        self.content_types
            .iter()
            .any(|p| sekisho_proto::content_type_matches(p, content_type))
    }
}

/// The chains being served, swapped whole when they change.
#[derive(Default)]
pub struct ChainSet {
    pub chains: HashMap<String, Arc<CompiledChain>>,
    pub problems: Vec<gproto::ChainProblem>,
}

impl ChainSet {
    /// Loads a directory of chain files. Bad files become problems; the rest load.
    pub fn load_dir(dir: &Path, aggregators: &AggregatorRegistry) -> Result<Self, GatewayError> {
        let (loaded, file_problems) = sekisho_chainstore::load_dir(dir, &Limits::default())
            .map_err(|e| GatewayError::Config(format!("chains_dir {}: {e}", dir.display())))?;
        let mut set = ChainSet::default();
        for p in file_problems {
            tracing::error!(source = %p.source.display(), path = %p.problem.path, "chain refused: {}", p.problem.message);
            set.problems.push(gproto::ChainProblem {
                source: p.source.display().to_string(),
                path: p.problem.path,
                message: p.problem.message,
            });
        }
        for c in loaded {
            let source = c.source.display().to_string();
            match CompiledChain::compile(&c.spec, 1, source.clone(), aggregators) {
                Ok(compiled) => {
                    tracing::info!(chain = %compiled.name, %source, "chain loaded");
                    set.chains.insert(compiled.name.clone(), Arc::new(compiled));
                }
                Err(message) => {
                    tracing::error!(%source, "chain refused: {message}");
                    set.problems.push(gproto::ChainProblem {
                        source,
                        path: String::new(),
                        message,
                    });
                }
            }
        }
        Ok(set)
    }
}

/// The current chain set; readers take an `Arc` and never wait on a writer for long.
#[derive(Default)]
pub struct Chains {
    current: RwLock<Arc<ChainSet>>,
}

impl Chains {
    pub fn new(set: ChainSet) -> Self {
        Chains {
            current: RwLock::new(Arc::new(set)),
        }
    }

    pub fn snapshot(&self) -> Arc<ChainSet> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn replace(&self, set: ChainSet) {
        let mut g = self.current.write().unwrap_or_else(|p| p.into_inner());
        *g = Arc::new(set);
    }
}
