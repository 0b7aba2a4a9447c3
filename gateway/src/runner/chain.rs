//! A chain run: stages in order (or where `goto` sends), until a rule decides or the
//! last stage ends with the chain's `default_decision`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sekisho_chainstore::Decision;
use sekisho_proto::filter::v1 as fproto;
use sekisho_proto::gateway::v1::{self as gproto, ModerateResponse, StageTrace};

use super::stage::{Next, run_stage};
use crate::chain::CompiledChain;
use crate::error::GatewayError;
use crate::registry::FilterRegistry;
use crate::rules::RuleVars;

/// The item and facts of one request.
pub struct Item {
    pub content: fproto::Content,
    pub metadata: HashMap<String, String>,
    pub request_id: String,
    /// The caller's deadline, if it gave one: no filter call runs past it.
    pub deadline: Option<Instant>,
}

/// What a run has gathered so far.
pub struct RunState {
    pub content: fproto::Content,
    pub metadata: HashMap<String, String>,
    pub request_id: String,
    pub deadline: Option<Instant>,
    pub vars: RuleVars,
    /// Earlier stages' results, sent to later filters as context.
    pub earlier: Vec<fproto::StageResult>,
    pub traces: Vec<StageTrace>,
}

/// Runs chains against the filters in a registry.
#[derive(Clone)]
pub struct Runner {
    pub registry: FilterRegistry,
}

impl Runner {
    pub async fn run(
        &self,
        chain: Arc<CompiledChain>,
        item: Item,
    ) -> Result<ModerateResponse, GatewayError> {
        let start = Instant::now();
        let mut state = RunState {
            vars: RuleVars::new(&item.metadata),
            content: item.content,
            metadata: item.metadata,
            request_id: item.request_id,
            deadline: item.deadline,
            earlier: Vec::with_capacity(chain.stages.len()),
            traces: Vec::with_capacity(chain.stages.len()),
        };
        let mut index = 0;
        let (decision, reason) = loop {
            if index >= chain.stages.len() {
                break (chain.default_decision, "default".to_owned());
            }
            match run_stage(&self.registry, &chain, index, &mut state).await {
                Next::Stage(i) => index = i,
                Next::Decide(d, r) => break (d, r),
                Next::Fail(e) => return Err(e),
            }
        };
        let audit = decision == Decision::Approve
            && chain.audit_sample_rate > 0.0
            && rand::random::<f64>() < chain.audit_sample_rate;
        Ok(ModerateResponse {
            decision: to_proto(decision) as i32,
            reason,
            chain: chain.name.clone(),
            chain_version: chain.version,
            stages: state.traces,
            audit,
            request_id: state.request_id,
            latency_us: start.elapsed().as_micros() as u64,
        })
    }
}

pub fn to_proto(d: Decision) -> gproto::Decision {
    match d {
        Decision::Approve => gproto::Decision::Approve,
        Decision::Reject => gproto::Decision::Reject,
        Decision::Review => gproto::Decision::Review,
    }
}
