//! Branch rules: CEL over `score`, `filters.<alias>.{score,labels}`, `stages.<id>.score`
//! and `metadata`. The variables grow as stages finish; a rule that fails to evaluate
//! (a missing label, a non-boolean result) is an error, and errors end in REVIEW.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Value;
use cel::objects::{Key, Map};

thread_local! {
    /// The standard functions, built once per thread; each evaluation adds its variables
    /// in a child scope.
    static ROOT: cel::Context<'static, 'static> = cel::Context::default();
}

/// Rules estimated at more than this many steps all together (5 to 10 ms at 50 to 100
/// ns a step) are evaluated with the worker thread handed over to the runtime's other
/// tasks first (`block_in_place`): a stage's rules may take up to a second or more
/// (each rule is held to 10 million steps), during which the thread serves nothing else.
pub const BLOCKING_RULES_COST: f64 = 100_000.0;

/// [`RuleVars::first_match`], off the async worker threads' hands when the rules'
/// estimated `cost` passes [`BLOCKING_RULES_COST`] on a multi-threaded runtime.
pub fn evaluate<'a>(
    vars: &RuleVars,
    score: f64,
    uses: Uses,
    cost: f64,
    rules: impl ExactSizeIterator<Item = &'a cel::Program>,
) -> Result<Option<usize>, (usize, String)> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if cost > BLOCKING_RULES_COST && multi_thread {
        tokio::task::block_in_place(|| vars.first_match(score, uses, rules))
    } else {
        vars.first_match(score, uses, rules)
    }
}

/// Which rule variables a stage's rules read, found when the chain is compiled: only
/// those are bound when the rules run (binding `filters` converts every filter's result).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uses {
    pub filters: bool,
    pub stages: bool,
    pub metadata: bool,
}

impl Uses {
    pub fn of<'a>(programs: impl Iterator<Item = &'a cel::Program>) -> Self {
        let mut u = Uses::default();
        for p in programs {
            let r = p.references();
            u.filters |= r.has_variable("filters");
            u.stages |= r.has_variable("stages");
            u.metadata |= r.has_variable("metadata");
        }
        u
    }
}

/// The variables rules see, built up over a chain run.
pub struct RuleVars {
    filters: HashMap<Key, Value>,
    stages: HashMap<Key, Value>,
    metadata: Value,
}

impl RuleVars {
    pub fn new(metadata: &HashMap<String, String>) -> Self {
        let m: HashMap<Key, Value> = metadata
            .iter()
            .map(|(k, v)| (Key::from(k.as_str()), Value::from(v.as_str())))
            .collect();
        RuleVars {
            filters: HashMap::new(),
            stages: HashMap::new(),
            metadata: Value::Map(Map { map: Arc::new(m) }),
        }
    }

    /// Records a counted filter's result.
    pub fn add_filter(&mut self, alias: &str, score: f64, labels: &HashMap<String, f64>) {
        let labels: HashMap<Key, Value> = labels
            .iter()
            .map(|(k, v)| (Key::from(k.as_str()), Value::Float(*v)))
            .collect();
        let mut entry = HashMap::with_capacity(2);
        entry.insert(Key::from("score"), Value::Float(score));
        entry.insert(
            Key::from("labels"),
            Value::Map(Map {
                map: Arc::new(labels),
            }),
        );
        self.filters.insert(
            Key::from(alias),
            Value::Map(Map {
                map: Arc::new(entry),
            }),
        );
    }

    /// Records a finished stage's score.
    pub fn add_stage(&mut self, id: &str, score: f64) {
        let mut entry = HashMap::with_capacity(1);
        entry.insert(Key::from("score"), Value::Float(score));
        self.stages.insert(
            Key::from(id),
            Value::Map(Map {
                map: Arc::new(entry),
            }),
        );
    }

    /// Evaluates the rules in order with `score` as the current stage's score; returns the
    /// index of the first that holds.
    pub fn first_match<'a>(
        &self,
        score: f64,
        uses: Uses,
        rules: impl ExactSizeIterator<Item = &'a cel::Program>,
    ) -> Result<Option<usize>, (usize, String)> {
        if rules.len() == 0 {
            return Ok(None);
        }
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value("score", Value::Float(score));
            if uses.filters {
                ctx.add_variable_from_value(
                    "filters",
                    Value::Map(Map {
                        map: Arc::new(self.filters.clone()),
                    }),
                );
            }
            if uses.stages {
                ctx.add_variable_from_value(
                    "stages",
                    Value::Map(Map {
                        map: Arc::new(self.stages.clone()),
                    }),
                );
            }
            if uses.metadata {
                ctx.add_variable_from_value("metadata", self.metadata.clone());
            }
            for (i, program) in rules.enumerate() {
                match program.execute(&ctx) {
                    Ok(Value::Bool(true)) => return Ok(Some(i)),
                    Ok(Value::Bool(false)) => {}
                    Ok(other) => {
                        return Err((i, format!("the rule gave {other:?}, not true or false")));
                    }
                    Err(e) => return Err((i, e.to_string())),
                }
            }
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> cel::Program {
        sekisho_chainstore::compile_rule(s).unwrap()
    }

    #[test]
    fn rules_see_scores_labels_stages_and_metadata() {
        let mut v = RuleVars::new(&[("tier".to_owned(), "free".to_owned())].into());
        v.add_filter("face", 0.9, &[("face_count".to_owned(), 2.0)].into());
        v.add_stage("faces", 0.9);
        let rules = [
            rule("score > 0.95"),
            rule(
                "filters.face.labels.face_count > 1.0 && stages.faces.score > 0.5 && metadata.tier == 'free'",
            ),
        ];
        let uses = Uses::of(rules.iter());
        assert!(uses.filters && uses.stages && uses.metadata);
        assert_eq!(v.first_match(0.3, uses, rules.iter()), Ok(Some(1)));
        assert_eq!(v.first_match(0.99, uses, rules.iter()), Ok(Some(0)));
    }

    #[test]
    fn macros_range_over_the_filters_that_ran() {
        let mut v = RuleVars::new(&HashMap::new());
        v.add_filter("face", 0.2, &HashMap::new());
        v.add_filter("ng", 0.95, &HashMap::new());
        let rules = [
            rule("filters.all(k, filters[k].score < 0.9)"),
            rule("filters.exists(k, filters[k].score > 0.9 && k == 'ng')"),
        ];
        let uses = Uses::of(rules.iter());
        assert_eq!(v.first_match(0.5, uses, rules.iter()), Ok(Some(1)));
        v.add_filter("ng", 0.5, &HashMap::new());
        assert_eq!(v.first_match(0.5, uses, rules.iter()), Ok(Some(0)));
    }

    /// A stage's rules estimated past [`BLOCKING_RULES_COST`] hand the worker thread
    /// over while they run: on a runtime with one worker, a task ticking every 2 ms
    /// goes on ticking while they are evaluated (a fifth of a second or so here);
    /// cheap rules are evaluated in place, and the ticking waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn costly_rules_do_not_hold_the_runtime() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                t.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(ticks.load(Ordering::SeqCst) > 0);
        let list = format!("[{}]", ["0"; 500].join(","));
        let text = format!("{list}.all(x, {list}.all(y, y == x))");
        let cost = sekisho_chainstore::rule_cost(&rule(&text));
        assert!(cost > BLOCKING_RULES_COST, "{cost}");
        // Cheap by the estimate given first: in place (a costly path run first would
        // leave the runtime's core on another thread).
        for given in [0.0, cost] {
            let (ticks, text) = (ticks.clone(), text.clone());
            let (matched, during) = tokio::spawn(async move {
                let rules = [rule(&text)];
                let v = RuleVars::new(&HashMap::new());
                let before = ticks.load(Ordering::SeqCst);
                let m = evaluate(&v, 0.5, Uses::of(rules.iter()), given, rules.iter());
                (m, ticks.load(Ordering::SeqCst) - before)
            })
            .await
            .unwrap();
            assert_eq!(matched, Ok(Some(0)));
            if given > BLOCKING_RULES_COST {
                assert!(during > 0, "the runtime was held while costly rules ran");
            } else {
                assert_eq!(during, 0, "cheap rules are evaluated in place");
            }
        }
        heartbeat.abort();
    }

    #[test]
    fn missing_labels_and_non_booleans_are_errors() {
        let v = RuleVars::new(&HashMap::new());
        let rules = [rule("score + 1.0")];
        assert!(!Uses::of(rules.iter()).filters);
        assert!(matches!(
            v.first_match(0.1, Uses::of(rules.iter()), rules.iter()),
            Err((0, _))
        ));
        let rules = [rule("filters.nope.score > 0.5")];
        assert!(matches!(
            v.first_match(0.1, Uses::of(rules.iter()), rules.iter()),
            Err((0, _))
        ));
    }
}
