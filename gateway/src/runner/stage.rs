//! One stage: its filters run concurrently, each failure is judged by its `on_error`,
//! the counted scores are aggregated, and the first branch rule that holds acts.

use std::time::Instant;

use sekisho_chainstore::{Decision, OnError};
use sekisho_proto::filter::v1 as fproto;
use sekisho_proto::gateway::v1::{FilterTrace, Outcome, StageTrace};

use super::chain::RunState;
use super::filter::run_filter;
use crate::aggregate::{AggregateInput, StageRef};
use crate::chain::{Action, CompiledChain};
use crate::error::GatewayError;
use crate::metrics as m;
use crate::registry::FilterRegistry;

/// What comes after a stage.
pub enum Next {
    Stage(usize),
    Decide(Decision, String),
    Fail(GatewayError),
}

/// Runs stage `index` of `chain`; records its trace and results in `state`.
pub async fn run_stage(
    registry: &FilterRegistry,
    chain: &CompiledChain,
    index: usize,
    state: &mut RunState,
) -> Next {
    let stage = &chain.stages[index];
    let start = Instant::now();
    let calls = stage.filters.iter().map(|f| {
        let req = fproto::ApplyRequest {
            content: Some(state.content.clone()),
            config: f.config.clone(),
            context: Some(fproto::FilterContext {
                chain: chain.name.clone(),
                stage: stage.id.clone(),
                alias: f.alias.clone(),
                request_id: state.request_id.clone(),
                metadata: state.metadata.clone(),
                stages: state.earlier.clone(),
            }),
        };
        run_filter(registry, f, req, &chain.name, &stage.id, state.deadline)
    });
    let runs = futures::future::join_all(calls).await;

    let mut trace = StageTrace {
        id: stage.id.clone(),
        aggregator: stage.aggregator_label.clone(),
        branch: -1,
        ..Default::default()
    };
    let mut counted: Vec<(usize, f64)> = Vec::new();
    let mut review_for: Option<String> = None;
    let mut failed: Option<GatewayError> = None;
    let mut results = Vec::new();
    for (i, (f, run)) in stage.filters.iter().zip(runs).enumerate() {
        let mut t = FilterTrace {
            alias: f.alias.clone(),
            filter: f.filter.clone(),
            attempts: run.attempts,
            latency_us: run.latency.as_micros() as u64,
            shadow: f.shadow,
            ..Default::default()
        };
        match run.result {
            Ok(r) => {
                t.outcome = Outcome::Ok as i32;
                t.score = r.score;
                t.labels = r.labels;
                t.regions = r.regions;
                t.details = r.details;
                if !f.shadow {
                    counted.push((i, t.score));
                }
            }
            Err(status) => {
                t.error = format!("{:?}: {}", status.code(), status.message());
                let policy = if f.shadow {
                    OnError::Skip
                } else {
                    f.policy.on_error
                };
                match policy {
                    OnError::Review => {
                        t.outcome = Outcome::ErrorReview as i32;
                        review_for.get_or_insert_with(|| f.alias.clone());
                    }
                    OnError::Skip => t.outcome = Outcome::ErrorSkipped as i32,
                    OnError::Score(x) => {
                        t.outcome = Outcome::ErrorScored as i32;
                        t.score = x;
                        counted.push((i, x));
                    }
                    OnError::Fail => {
                        t.outcome = Outcome::ErrorFailed as i32;
                        failed.get_or_insert(GatewayError::FilterFailed {
                            stage: stage.id.clone(),
                            alias: f.alias.clone(),
                            status,
                        });
                    }
                }
            }
        }
        trace.filters.push(t);
    }
    if let Some(e) = failed {
        return finish(state, trace, start, chain, Next::Fail(e));
    }

    for &(i, score) in &counted {
        let t = &trace.filters[i];
        state.vars.add_filter(&t.alias, score, &t.labels);
        results.push(fproto::FilterResult {
            alias: t.alias.clone(),
            filter: t.filter.clone(),
            score,
            labels: t.labels.clone(),
            regions: t.regions.clone(),
        });
    }

    let inputs: Vec<AggregateInput> = counted
        .iter()
        .map(|&(i, score)| AggregateInput {
            alias: &trace.filters[i].alias,
            filter: &trace.filters[i].filter,
            score,
            labels: &trace.filters[i].labels,
        })
        .collect();
    let aggregated = if inputs.is_empty() {
        Err("no filter of this stage gave a result".to_owned())
    } else {
        stage
            .aggregator
            .aggregate(
                StageRef {
                    chain: &chain.name,
                    stage: &stage.id,
                },
                &inputs,
            )
            .await
    };
    drop(inputs);
    if let Ok(score) = aggregated {
        trace.score = score;
        state.vars.add_stage(&stage.id, score);
    }
    state.earlier.push(fproto::StageResult {
        id: stage.id.clone(),
        score: trace.score,
        filters: results,
    });

    // Precision first: a broken filter or a stage with nothing to go on ends in REVIEW.
    if let Some(alias) = review_for {
        trace.error = format!("filter `{alias}` failed and its policy is on_error: review");
        return finish(
            state,
            trace,
            start,
            chain,
            Next::Decide(Decision::Review, "filter_error".into()),
        );
    }
    let score = match aggregated {
        Ok(s) => s,
        Err(e) => {
            trace.error = format!("aggregation failed: {e}");
            let reason = if counted.is_empty() {
                "no_filter_result"
            } else {
                "aggregator_error"
            };
            return finish(
                state,
                trace,
                start,
                chain,
                Next::Decide(Decision::Review, reason.into()),
            );
        }
    };

    let next = match crate::rules::evaluate(
        &state.vars,
        score,
        stage.uses,
        stage.rules_cost,
        stage.branches.iter().map(|b| &b.program),
    ) {
        Ok(Some(k)) => {
            let b = &stage.branches[k];
            trace.branch = k as i32;
            trace.when = b.when.clone();
            match &b.action {
                Action::Goto(t) if *t > index => Next::Stage(*t),
                Action::Goto(_) => {
                    trace.error = "goto does not point forward".into();
                    Next::Decide(Decision::Review, "rule_error".into())
                }
                Action::Decide { decision, reason } => Next::Decide(*decision, reason.clone()),
            }
        }
        Ok(None) => Next::Stage(index + 1),
        Err((k, e)) => {
            trace.branch = k as i32;
            trace.when = stage.branches[k].when.clone();
            trace.error = format!("the rule could not be evaluated: {e}");
            Next::Decide(Decision::Review, "rule_error".into())
        }
    };
    finish(state, trace, start, chain, next)
}

fn finish(
    state: &mut RunState,
    mut trace: StageTrace,
    start: Instant,
    chain: &CompiledChain,
    next: Next,
) -> Next {
    let elapsed = start.elapsed();
    trace.latency_us = elapsed.as_micros() as u64;
    trace.next = match &next {
        Next::Stage(i) if *i < chain.stages.len() => {
            if trace.branch >= 0 {
                format!("goto:{}", chain.stages[*i].id)
            } else {
                "next".into()
            }
        }
        Next::Stage(_) => "end".into(),
        Next::Decide(..) => "decide".into(),
        Next::Fail(_) => "fail".into(),
    };
    metrics::histogram!(m::STAGE_DURATION, "chain" => chain.name.clone(), "stage" => trace.id.clone())
        .record(elapsed.as_secs_f64());
    state.traces.push(trace);
    next
}
