//! Validation of a parsed chain: every problem names its path
//! (`stages[1].branches[0].when`) and says what to do. Checks that need discovery
//! (is the filter known, does it accept the content types, does the config fit its
//! schema) are in [`crate::catalog`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use cel::IdedExpr;
use cel::common::ast::{
    ComprehensionExpr, EntryExpr, Expr, LiteralValue, MapExpr, StructExpr, operators,
};

use crate::spec::{AggregateSpec, ChainSpec, OnError};

/// The variables branch rules may use.
pub const RULE_VARIABLES: &[&str] = &["score", "filters", "stages", "metadata"];

/// One thing wrong with a chain, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Size limits that keep a chain cheap to run and to show.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_stages: usize,
    pub max_filters_per_stage: usize,
    pub max_branches_per_stage: usize,
    pub max_expression_len: usize,
    pub max_timeout: Duration,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stages: 32,
            max_filters_per_stage: 32,
            max_branches_per_stage: 64,
            max_expression_len: 4096,
            max_timeout: Duration::from_secs(60),
            max_retries: 10,
        }
    }
}

/// How deep a branch rule's expression may nest, counted in nodes from its root to its
/// deepest leaf. CEL is evaluated by recursion, a stack frame or more a level, and a
/// stack overflow aborts the whole process: `1+1+…+1` fits 2,000 levels in the 4,096
/// characters a rule may have, and evaluating it overflowed a 2 MiB thread stack (a
/// tokio worker's) in release builds. The parser's own limit (96 levels of brackets)
/// does not see such chains. The rules a chain needs nest a dozen levels.
pub const MAX_RULE_DEPTH: usize = 100;

/// The most steps (expression nodes visited) a rule may take by [`cost`]'s estimate: a
/// macro's body counts once for each item of what it ranges over, so macros inside
/// macros multiply. In a release build a step is 50 to 100 ns: four macros nested over
/// lists of 40 (377 characters, 16 million steps; 19 million since appends count) took
/// 1.2 s, of 60 (80 million) 7.8 s; over lists of 200 they would take hours and fill the
/// memory. Two macros over a list of 1,900 bound to a macro's variable (25 million) took
/// 1.8 s, over four copies of it (534 million) 38 s. Two over a chain's filters and
/// their labels are estimated at 3 to 5 million.
pub const MAX_RULE_COST: f64 = 1e7;

/// The length a rule's cost estimate assumes for a list or map that neither the rule's
/// text nor a limit bounds: what a function other than the standard scalar ones
/// returns (at least its arguments' length).
pub const ASSUMED_LEN: f64 = 256.0;

/// The most labels one filter's verdict may carry (the gateway takes a verdict with more
/// as the filter failing), which rules' cost estimates count on for a filter's `labels`.
pub const MAX_VERDICT_LABELS: usize = 256;

/// The most entries a request's `metadata` may have (the gateway refuses more), which
/// rules' cost estimates count on.
pub const MAX_METADATA_ENTRIES: usize = 128;

/// Compiles a branch rule, checking that it names only the rule variables, nests at
/// most [`MAX_RULE_DEPTH`] levels and costs at most [`MAX_RULE_COST`] steps by [`cost`].
pub fn compile_rule(expr: &str) -> Result<cel::Program, String> {
    let program = cel::Program::compile(expr)
        .map_err(|e| format!("CEL does not compile: {}", compile_error(expr, &e)))?;
    if let Some(depth) = deeper_than(program.expression(), MAX_RULE_DEPTH) {
        return Err(format!(
            "the expression nests {depth} levels deep; the limit is {MAX_RULE_DEPTH}"
        ));
    }
    let cost = cost(program.expression());
    if cost > MAX_RULE_COST {
        return Err(format!(
            "the expression could take {cost:.0} steps to evaluate; the limit is \
             {MAX_RULE_COST:.0} (a macro inside a macro multiplies the lengths of the lists \
             or maps they range over: `filters`, `stages`, `metadata` and a filter's \
             `labels` at their limits, lists written in the rule at their length, also \
             through a macro's variable; comparing or adding lists costs their items)"
        ));
    }
    let refs = RuleRefs::of(program.expression());
    if let Some(first) = refs.variables.iter().find(|v| !RULE_VARIABLES.contains(v)) {
        return Err(format!(
            "unknown variable `{first}`; rules may use {}",
            RULE_VARIABLES.join(", ")
        ));
    }
    Ok(program)
}

/// What a rule reads: the variables it names (not those its macros bind, such as `k` in
/// `filters.exists(k, filters[k].score > 0.9)`), and the keys it reads of `filters` and
/// `stages` (`filters.face` or `filters['face']`), each once, in the order written.
#[derive(Debug, Default, PartialEq)]
struct RuleRefs<'a> {
    variables: BTreeSet<&'a str>,
    filters: Vec<&'a str>,
    stages: Vec<&'a str>,
}

impl<'a> RuleRefs<'a> {
    /// Walked by recursion: call it only on a tree no deeper than [`MAX_RULE_DEPTH`].
    fn of(root: &'a IdedExpr) -> Self {
        let mut refs = RuleRefs::default();
        refs.walk(root, &mut Vec::new());
        refs
    }

    fn walk(&mut self, node: &'a IdedExpr, bound: &mut Vec<&'a str>) {
        let free = |e: &'a IdedExpr, bound: &[&str]| match &e.expr {
            Expr::Ident(name) if !bound.contains(&name.as_str()) => Some(name.as_str()),
            _ => None,
        };
        match &node.expr {
            Expr::Ident(_) => self.variables.extend(free(node, bound)),
            Expr::Select(select) => {
                if let Some(root) = free(&select.operand, bound) {
                    self.member(root, &select.field);
                }
            }
            Expr::Call(call) if call.func_name == operators::INDEX && call.args.len() == 2 => {
                if let (Some(root), Expr::Literal(LiteralValue::String(key))) =
                    (free(&call.args[0], bound), &call.args[1].expr)
                {
                    self.member(root, key.inner());
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let outer = bound.len();
                bound.push(&c.iter_var);
                bound.extend(c.iter_var2.as_deref());
                bound.push(&c.accu_var);
                for e in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(e, bound);
                }
                bound.truncate(outer);
                return;
            }
            _ => {}
        }
        for child in children(node) {
            self.walk(child, bound);
        }
    }

    fn member(&mut self, root: &str, key: &'a str) {
        let keys = match root {
            "filters" => &mut self.filters,
            "stages" => &mut self.stages,
            _ => return,
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
}

/// The depth of `root` (a leaf alone is 1) when it is more than `limit`; walked with a
/// stack of its own, since the tree may be far deeper than the thread's.
fn deeper_than(root: &IdedExpr, limit: usize) -> Option<usize> {
    let mut deepest = 0;
    let mut todo = vec![(root, 1)];
    while let Some((node, depth)) = todo.pop() {
        deepest = deepest.max(depth);
        todo.extend(children(node).into_iter().map(|c| (c, depth + 1)));
    }
    (deepest > limit).then_some(deepest)
}

/// The estimate of the steps evaluating a compiled rule takes ([`cost`]).
pub fn rule_cost(program: &cel::Program) -> f64 {
    cost(program.expression())
}

/// An estimate of the steps evaluating `node` takes: one a node, a macro's loop body
/// once for each item it ranges over ([`Shape`]), and for `+`, `in`, `==` and `!=` on
/// lists and maps one step an item they copy or compare. Recursive: call it only on a
/// tree no deeper than [`MAX_RULE_DEPTH`].
fn cost(node: &IdedExpr) -> f64 {
    Scope::default().cost(node)
}

/// How long a value can be, level by level: `[0]` its own length (0 for a scalar),
/// `[1]` the longest of its members (a list's items, a map's keys and values), `[2]`
/// the longest of theirs, and so on; the last level holds for every level below it.
#[derive(Debug, Clone, PartialEq)]
struct Shape(Vec<f64>);

impl Shape {
    fn scalar() -> Self {
        Shape(vec![0.0])
    }

    /// What nothing bounds: [`ASSUMED_LEN`] at every level.
    fn unknown() -> Self {
        Shape(vec![ASSUMED_LEN])
    }

    fn of(len: f64, members: Shape) -> Self {
        if len == 0.0 {
            return Shape::scalar(); // no members
        }
        Shape(std::iter::once(len).chain(members.0).collect())
    }

    fn len(&self) -> f64 {
        self.0[0]
    }

    fn level(&self, i: usize) -> f64 {
        self.0.get(i).or(self.0.last()).copied().unwrap_or(0.0)
    }

    fn members(&self) -> Shape {
        match self.0.len() {
            1 => self.clone(),
            _ => Shape(self.0[1..].to_vec()),
        }
    }

    fn max(&self, other: &Shape) -> Shape {
        let levels = self.0.len().max(other.0.len());
        Shape(
            (0..levels)
                .map(|i| self.level(i).max(other.level(i)))
                .collect(),
        )
    }

    /// The items in all: its own, its members', and so on down the levels written out.
    fn items(&self) -> f64 {
        let mut product = 1.0;
        self.0
            .iter()
            .map(|len| {
                product *= len;
                product
            })
            .sum()
    }
}

/// The variables a rule's macros have bound so far, innermost last, with their shapes.
#[derive(Default)]
struct Scope<'a> {
    bound: Vec<(&'a str, Shape)>,
}

impl<'a> Scope<'a> {
    fn cost(&mut self, node: &'a IdedExpr) -> f64 {
        match &node.expr {
            Expr::Comprehension(c) => {
                let range = self.shape(&c.iter_range);
                let outer = self.cost(&c.iter_range) + self.cost(&c.accu_init);
                let mark = self.bound.len();
                self.bind_loop(c, &range);
                let body = self.cost(&c.loop_cond) + self.cost(&c.loop_step);
                let result = self.cost(&c.result);
                self.bound.truncate(mark);
                1.0 + outer + range.len() * body + result
            }
            Expr::Call(call) => {
                let of = |scope: &mut Self, i: usize| scope.shape(&call.args[i]);
                let items = match call.func_name.as_str() {
                    operators::ADD | operators::EQUALS | operators::NOT_EQUALS
                        if call.args.len() == 2 =>
                    {
                        let (a, b) = (of(self, 0), of(self, 1));
                        let appends = matches!(&call.args[0].expr,
                            Expr::Ident(name) if name.starts_with('@'));
                        if appends {
                            // A `map` or `filter` appending to what it builds, in place
                            // (its accumulator, `@result`, cannot be written in a rule).
                            b.len()
                        } else if call.func_name == operators::ADD {
                            // A copy of each list, its members shared.
                            a.len() + b.len()
                        } else {
                            a.items().min(b.items())
                        }
                    }
                    operators::IN if call.args.len() == 2 => of(self, 1).len(),
                    _ => 0.0,
                };
                1.0 + items
                    + children(node)
                        .into_iter()
                        .map(|c| self.cost(c))
                        .sum::<f64>()
            }
            _ => {
                1.0 + children(node)
                    .into_iter()
                    .map(|c| self.cost(c))
                    .sum::<f64>()
            }
        }
    }

    /// Binds a macro's variables for its loop: the item variables to the range's
    /// members, the accumulator to what the macro builds (for `map` and `filter` a list
    /// as long as the range, of its members or the body's values).
    fn bind_loop(&mut self, c: &'a ComprehensionExpr, range: &Shape) {
        let item = range.members();
        self.bound.push((&c.iter_var, item.clone()));
        if let Some(v) = &c.iter_var2 {
            self.bound.push((v, item.clone()));
        }
        self.bound.push((&c.accu_var, range.clone()));
        let step = self.shape(&c.loop_step);
        let accu = Shape::of(range.len(), item.max(&step.members()));
        self.bound.last_mut().expect("just pushed").1 = accu;
    }

    /// How long the value of `node` can be ([`Shape`]): literals as written, lists
    /// added together the sum, a macro's result as long as what it ranges over, the
    /// rule variables at their limits (`filters` a chain's most filters, each with at
    /// most [`MAX_VERDICT_LABELS`] labels; `stages` its most stages; `metadata`
    /// [`MAX_METADATA_ENTRIES`]), a macro's variable as a member of what it ranges
    /// over, and what a function other than the standard scalar ones returns at
    /// [`ASSUMED_LEN`] or its arguments' shape, whichever is longer.
    fn shape(&mut self, node: &'a IdedExpr) -> Shape {
        match &node.expr {
            Expr::Ident(name) => {
                if let Some((_, s)) = self.bound.iter().rev().find(|(v, _)| v == name) {
                    return s.clone();
                }
                let limits = Limits::default();
                let per_filter =
                    Shape::of(2.0, Shape::of(MAX_VERDICT_LABELS as f64, Shape::scalar()));
                match name.as_str() {
                    "filters" => Shape::of(
                        (limits.max_stages * limits.max_filters_per_stage) as f64,
                        per_filter,
                    ),
                    "stages" => {
                        Shape::of(limits.max_stages as f64, Shape::of(1.0, Shape::scalar()))
                    }
                    "metadata" => Shape::of(MAX_METADATA_ENTRIES as f64, Shape::scalar()),
                    "score" => Shape::scalar(),
                    _ => Shape::unknown(),
                }
            }
            Expr::Literal(_) => Shape::scalar(),
            Expr::List(list) => {
                let members = list
                    .elements
                    .iter()
                    .fold(Shape::scalar(), |m, e| m.max(&self.shape(e)));
                Shape::of(list.elements.len() as f64, members)
            }
            Expr::Map(MapExpr { entries }) => {
                let mut members = Shape::scalar();
                for e in entries {
                    if let EntryExpr::MapEntry(e) = &e.expr {
                        members = members.max(&self.shape(&e.key)).max(&self.shape(&e.value));
                    }
                }
                Shape::of(entries.len() as f64, members)
            }
            Expr::Select(select) if select.test => Shape::scalar(),
            Expr::Select(select) => self.shape(&select.operand).members(),
            Expr::Comprehension(c) => {
                let range = self.shape(&c.iter_range);
                let mark = self.bound.len();
                self.bind_loop(c, &range);
                let result = self.shape(&c.result);
                self.bound.truncate(mark);
                result
            }
            Expr::Call(call) => {
                let f = call.func_name.as_str();
                let scalar = matches!(
                    f,
                    "size"
                        | "int"
                        | "uint"
                        | "double"
                        | "string"
                        | "bytes"
                        | "bool"
                        | "type"
                        | "matches"
                        | "contains"
                        | "startsWith"
                        | "endsWith"
                ) || (f.starts_with(['_', '!', '-', '@'])
                    && ![
                        operators::ADD,
                        operators::INDEX,
                        operators::OPT_INDEX,
                        operators::OPT_SELECT,
                        operators::CONDITIONAL,
                    ]
                    .contains(&f));
                if scalar {
                    return Shape::scalar();
                }
                let args: Vec<Shape> = call.args.iter().map(|a| self.shape(a)).collect();
                match f {
                    operators::ADD if args.len() == 2 => Shape::of(
                        args[0].len() + args[1].len(),
                        args[0].members().max(&args[1].members()),
                    ),
                    operators::INDEX | operators::OPT_INDEX if !args.is_empty() => {
                        args[0].members()
                    }
                    operators::OPT_SELECT if !args.is_empty() => args[0].members(),
                    operators::CONDITIONAL if args.len() == 3 => args[1].max(&args[2]),
                    _ => {
                        let target = call.target.as_deref().map(|t| self.shape(t));
                        args.iter()
                            .chain(&target)
                            .fold(Shape::unknown(), |m, a| m.max(a))
                    }
                }
            }
            Expr::Struct(_) | Expr::Unspecified => Shape::unknown(),
        }
    }
}

/// The expressions directly under `node`, macros' expansions included.
fn children(node: &IdedExpr) -> Vec<&IdedExpr> {
    match &node.expr {
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(e) => vec![&e.key, &e.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => vec![],
    }
}

/// CEL's compile errors, the first with the part of its line around it, at most three:
/// the parser's own text repeats the whole line under each error (60 KB for a 4 KB rule
/// of unbalanced brackets), too much for a chain's list of problems.
fn compile_error(expr: &str, errors: &cel::ParseErrors) -> String {
    const AROUND: usize = 40;
    let Some(first) = errors.errors.first() else {
        return "no reason given".into();
    };
    let (line, column) = first.pos;
    let mut text = format!("{}:{}: {}", line, column, first.msg);
    let source = usize::try_from(line - 1)
        .ok()
        .and_then(|l| expr.lines().nth(l));
    if let (Some(source), Ok(column)) = (source, usize::try_from(column - 1)) {
        let chars: Vec<char> = source.chars().collect();
        let column = column.min(chars.len());
        let from = column.saturating_sub(AROUND);
        let to = (column + AROUND).min(chars.len());
        let before = if from > 0 { "…" } else { "" };
        let after = if to < chars.len() { "…" } else { "" };
        let part: String = chars[from..to].iter().collect();
        let caret = " ".repeat(before.chars().count() + column - from);
        text.push_str(&format!("\n| {before}{part}{after}\n| {caret}^"));
    }
    for e in errors.errors.iter().skip(1).take(2) {
        text.push_str(&format!("\n{}:{}: {}", e.pos.0, e.pos.1, e.msg));
    }
    if errors.errors.len() > 3 {
        text.push_str(&format!("\n(and {} more)", errors.errors.len() - 3));
    }
    text
}

/// Validates a chain; an empty list means it is valid.
pub fn validate(spec: &ChainSpec, limits: &Limits) -> Vec<Problem> {
    let mut v = Validator::default();
    v.chain(spec, limits);
    v.problems
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn chain(&mut self, c: &ChainSpec, limits: &Limits) {
        if !is_name(&c.name) {
            self.push(
                "name",
                "a chain name is 1 to 128 characters of a-z, 0-9, `-` and `_`",
            );
        }
        if c.content_types.is_empty() {
            self.push(
                "content_types",
                "list at least one content type, e.g. image/jpeg",
            );
        }
        for (i, ct) in c.content_types.iter().enumerate() {
            if !is_content_type(ct) {
                self.push(
                    format!("content_types[{i}]"),
                    format!("`{ct}` is not a content type like `image/png` or `image/*`"),
                );
            }
        }
        if !(0.0..=1.0).contains(&c.audit_sample_rate) {
            self.push("audit_sample_rate", "must be between 0 and 1");
        }
        self.policy("defaults", &c.defaults, limits);
        if c.stages.is_empty() {
            self.push("stages", "a chain needs at least one stage");
        }
        if c.stages.len() > limits.max_stages {
            self.push(
                "stages",
                format!(
                    "{} stages; the limit is {}",
                    c.stages.len(),
                    limits.max_stages
                ),
            );
        }

        let mut stage_index: HashMap<&str, usize> = HashMap::new();
        for (i, s) in c.stages.iter().enumerate() {
            if !is_name(&s.id) {
                self.push(
                    format!("stages[{i}].id"),
                    "a stage id is 1 to 128 characters of a-z, 0-9, `-` and `_`",
                );
            }
            if let Some(first) = stage_index.insert(&s.id, i) {
                self.push(
                    format!("stages[{i}].id"),
                    format!("duplicate stage id `{}` (also stages[{first}])", s.id),
                );
            }
        }

        // Aliases are chain-wide: rules of later stages see earlier stages' filters.
        let mut aliases: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut seen_aliases: HashSet<&str> = HashSet::new();
        for (i, s) in c.stages.iter().enumerate() {
            let p = format!("stages[{i}]");
            if s.filters.is_empty() {
                self.push(format!("{p}.filters"), "a stage needs at least one filter");
            }
            if s.filters.len() > limits.max_filters_per_stage {
                self.push(
                    format!("{p}.filters"),
                    format!(
                        "{} filters; the limit is {}",
                        s.filters.len(),
                        limits.max_filters_per_stage
                    ),
                );
            }
            let mut stage_aliases = HashSet::new();
            for (j, f) in s.filters.iter().enumerate() {
                let fp = format!("{p}.filters[{j}]");
                if f.filter.is_empty() {
                    self.push(format!("{fp}.use"), "name the filter to use");
                }
                if let Some((si, fi)) = aliases.insert(f.alias(), (i, j)) {
                    self.push(
                        format!("{fp}.as"),
                        format!(
                            "duplicate alias `{}` (also stages[{si}].filters[{fi}]); give one of them another `as`",
                            f.alias()
                        ),
                    );
                }
                if let Some(cfg) = &f.config
                    && !cfg.is_object()
                {
                    self.push(format!("{fp}.config"), "config must be a map");
                }
                self.policy(&fp, &f.policy(), limits);
                stage_aliases.insert(f.alias());
                seen_aliases.insert(f.alias());
            }
            if s.filters.iter().all(|f| f.shadow) && !s.filters.is_empty() {
                self.push(
                    format!("{p}.filters"),
                    "every filter of this stage is a shadow; at least one must count",
                );
            }
            self.aggregate(&format!("{p}.aggregate"), &s.aggregate, &stage_aliases);

            if s.branches.len() > limits.max_branches_per_stage {
                self.push(
                    format!("{p}.branches"),
                    format!(
                        "{} branches; the limit is {}",
                        s.branches.len(),
                        limits.max_branches_per_stage
                    ),
                );
            }
            for (k, b) in s.branches.iter().enumerate() {
                let bp = format!("{p}.branches[{k}]");
                if b.when.len() > limits.max_expression_len {
                    self.push(
                        format!("{bp}.when"),
                        format!(
                            "the expression is {} characters; the limit is {}",
                            b.when.len(),
                            limits.max_expression_len
                        ),
                    );
                } else {
                    match compile_rule(&b.when) {
                        Err(e) => self.push(format!("{bp}.when"), e),
                        Ok(program) => self.references(
                            &format!("{bp}.when"),
                            &RuleRefs::of(program.expression()),
                            &seen_aliases,
                            i,
                            c,
                        ),
                    }
                }
                match (&b.goto, &b.decide) {
                    (Some(_), Some(_)) | (None, None) => self.push(
                        bp.clone(),
                        "a branch needs exactly one of `goto` or `decide`",
                    ),
                    (Some(target), None) => match stage_index.get(target.as_str()) {
                        None => self.push(
                            format!("{bp}.goto"),
                            format!("no stage `{target}`; stages are {}", stage_list(c)),
                        ),
                        Some(&t) if t <= i => self.push(
                            format!("{bp}.goto"),
                            format!(
                                "`goto` must point to a later stage (`{target}` is not after `{}`), so that every run ends",
                                s.id
                            ),
                        ),
                        Some(_) => {}
                    },
                    (None, Some(d)) => {
                        if d.reason.trim().is_empty() {
                            self.push(format!("{bp}.decide.reason"), "give a reason");
                        }
                    }
                }
            }
        }
    }

    fn policy(&mut self, path: &str, p: &crate::spec::Policy, limits: &Limits) {
        if let Some(t) = p.timeout
            && (t.is_zero() || t > limits.max_timeout)
        {
            self.push(
                format!("{path}.timeout"),
                format!(
                    "must be above 0 and at most {}s",
                    limits.max_timeout.as_secs()
                ),
            );
        }
        if let Some(r) = p.retries
            && r > limits.max_retries
        {
            self.push(
                format!("{path}.retries"),
                format!("{r} retries; the limit is {}", limits.max_retries),
            );
        }
        if let Some(OnError::Score(s)) = p.on_error
            && !(0.0..=1.0).contains(&s)
        {
            self.push(format!("{path}.on_error.score"), "must be between 0 and 1");
        }
    }

    fn aggregate(&mut self, path: &str, a: &AggregateSpec, stage_aliases: &HashSet<&str>) {
        let AggregateSpec::Builtin {
            name,
            weights,
            k,
            threshold,
        } = a
        else {
            // Custom and remote aggregators are checked against what the gateway registered.
            return;
        };
        const BUILTINS: &[&str] = &["min", "max", "mean", "weighted_mean", "vote"];
        if !BUILTINS.contains(&name.as_str()) {
            self.push(
                path,
                format!(
                    "unknown aggregator `{name}`; built-in ones are {}",
                    BUILTINS.join(", ")
                ),
            );
            return;
        }
        if name == "weighted_mean" {
            if weights.is_empty() {
                self.push(
                    format!("{path}.weights"),
                    "weighted_mean needs weights per alias",
                );
            }
            for (alias, w) in weights {
                if !stage_aliases.contains(alias.as_str()) {
                    self.push(
                        format!("{path}.weights.{alias}"),
                        format!("no filter with alias `{alias}` in this stage"),
                    );
                }
                if !w.is_finite() || *w < 0.0 {
                    self.push(
                        format!("{path}.weights.{alias}"),
                        "a weight is a number ≥ 0",
                    );
                }
            }
        } else if !weights.is_empty() {
            self.push(
                format!("{path}.weights"),
                "weights go with weighted_mean only",
            );
        }
        if name == "vote" {
            match k {
                None | Some(0) => self.push(format!("{path}.k"), "vote needs k ≥ 1"),
                Some(k) if *k as usize > stage_aliases.len() => self.push(
                    format!("{path}.k"),
                    format!("k = {k} but the stage has {} filters", stage_aliases.len()),
                ),
                _ => {}
            }
            if let Some(t) = threshold
                && !(0.0..=1.0).contains(t)
            {
                self.push(format!("{path}.threshold"), "must be between 0 and 1");
            }
        } else if k.is_some() || threshold.is_some() {
            self.push(path, "k and threshold go with vote only");
        }
    }

    /// Rules may only name aliases and stages that have run by the time they are evaluated.
    fn references(
        &mut self,
        path: &str,
        refs: &RuleRefs<'_>,
        aliases: &HashSet<&str>,
        stage: usize,
        c: &ChainSpec,
    ) {
        for alias in &refs.filters {
            if !aliases.contains(alias) {
                self.push(
                    path,
                    format!("no filter with alias `{alias}` in this or an earlier stage"),
                );
            }
        }
        for id in &refs.stages {
            if !c.stages[..=stage].iter().any(|s| s.id == *id) {
                self.push(
                    path,
                    format!("no stage `{id}` at or before `{}`", c.stages[stage].id),
                );
            }
        }
    }
}

fn stage_list(c: &ChainSpec) -> String {
    c.stages
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_content_type(s: &str) -> bool {
    let Some((t, sub)) = s.split_once('/') else {
        return false;
    };
    let tok = |x: &str| {
        !x.is_empty()
            && x.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (tok(t) || t == "*") && (tok(sub) || sub == "*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_chain;

    fn problems(doc: &str) -> Vec<String> {
        validate(&parse_chain(doc).unwrap(), &Limits::default())
            .into_iter()
            .map(|p| p.to_string())
            .collect()
    }

    const HEAD: &str = "name: c\ncontent_types: [text/plain]\n";

    #[test]
    fn a_good_chain_has_no_problems() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n    branches:\n      - when: \"filters.kw.score > 0.5 && metadata['x'] == 'y'\"\n        goto: b\n  - id: b\n    filters: [{{use: kw, as: kw2}}]\n    branches:\n      - when: \"stages.a.score > 0.1\"\n        decide: {{decision: REJECT, reason: r}}\n"
        );
        assert_eq!(problems(&doc), Vec::<String>::new());
    }

    #[test]
    fn goto_must_point_forward() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n  - id: b\n    filters: [{{use: kw, as: k2}}]\n    branches:\n      - when: \"true\"\n        goto: a\n"
        );
        let p = problems(&doc);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("stages[1].branches[0].goto: `goto` must point to a later stage"),
            "{p:?}"
        );
    }

    #[test]
    fn goto_to_a_missing_stage_lists_the_stages() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n    branches:\n      - when: \"true\"\n        goto: zz\n"
        );
        assert_eq!(
            problems(&doc),
            vec!["stages[0].branches[0].goto: no stage `zz`; stages are a"]
        );
    }

    #[test]
    fn bad_cel_and_unknown_variables_are_named() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n    branches:\n      - when: \"score >=\"\n        decide: {{decision: REVIEW, reason: r}}\n      - when: \"scor > 1.0\"\n        decide: {{decision: REVIEW, reason: r}}\n"
        );
        let p = problems(&doc);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("stages[0].branches[0].when: CEL does not compile"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("stages[0].branches[1].when: unknown variable `scor`"),
            "{p:?}"
        );
    }

    /// `1+1+…+1` is a left-leaning chain the parser's bracket limit does not see; 2,000
    /// levels (4,001 characters, under the length limit) overflowed a 2 MiB stack when
    /// evaluated, in release builds too, which aborts the process.
    #[test]
    fn rules_nesting_deeper_than_the_limit_are_refused() {
        let sum = |terms: usize| format!("1{}", "+1".repeat(terms - 1));
        assert!(sum(2000).len() <= Limits::default().max_expression_len);
        assert_eq!(
            compile_rule(&sum(2000)).err().as_deref(),
            Some("the expression nests 2000 levels deep; the limit is 100")
        );
        for deep in [
            format!("metadata{}", ".a".repeat(100)),
            format!("metadata{}", "['a']".repeat(100)),
            format!("score{} > 0.5", " * 1.0".repeat(99)),
        ] {
            let e = compile_rule(&deep).err().unwrap_or_default();
            assert!(
                e.starts_with("the expression nests 101 levels"),
                "{deep}: {e}"
            );
        }
        // At the limit, a rule is evaluated in a debug build, whose frames are larger than
        // a release build's, on a thread with a tokio worker's 2 MiB of stack.
        let at_limit = compile_rule(&sum(100)).unwrap();
        let value = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || at_limit.execute(&cel::Context::default()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(value, Ok(cel::Value::Int(100)));
    }

    #[test]
    fn rules_that_could_take_too_long_are_refused() {
        let cost_of = |e: &str| cost(cel::Program::compile(e).unwrap().expression());
        let length_of = |e: &str| {
            let p = cel::Program::compile(e).unwrap();
            Scope::default().shape(p.expression()).len()
        };
        assert_eq!(cost_of("score > 0.5"), 3.0);
        assert_eq!(length_of("[1, 2] + [3]"), 3.0);
        assert_eq!(length_of("{'a': 1}"), 1.0);
        assert_eq!(length_of("[1, 2].map(x, x * 2)"), 2.0);
        assert_eq!(length_of("filters"), 1024.0);
        assert_eq!(length_of("metadata"), 128.0);
        assert_eq!(length_of("filters.a.labels"), MAX_VERDICT_LABELS as f64);
        assert_eq!(length_of("filters['a'].labels"), MAX_VERDICT_LABELS as f64);
        // A macro's body counts once an item; a macro inside it multiplies.
        let list = |n: usize| format!("[{}]", vec!["1"; n].join(", "));
        let one = |n: usize| cost_of(&format!("{}.exists(x, x > 1)", list(n)));
        assert_eq!(one(6) - one(3), one(9) - one(6));
        assert!(one(6) - one(3) > 3.0 * 3.0);
        let two = |n: usize| {
            cost_of(&format!(
                "{}.exists(x, {}.exists(y, y > x))",
                list(n),
                list(n)
            ))
        };
        assert!(two(40) / two(20) > 3.5, "{} {}", two(40), two(20));

        let labels = "filters.all(k, filters[k].labels.all(l, l != 'x' && filters[k].labels[l] < 0.5 || l == 'y'))";
        assert!(compile_rule(labels).is_ok());
        let forty = format!("[{}]", ["0"; 40].join(","));
        let nested =
            format!("{forty}.map(a, {forty}.map(b, {forty}.map(c, {forty}.map(d, d)))).size() > 0");
        let e = compile_rule(&nested).unwrap_err();
        assert!(
            e.starts_with(
                "the expression could take 18576407 steps to evaluate; the limit is 10000000"
            ),
            "{e}"
        );
        let e = compile_rule(&format!("{labels} && stages.all(s, {labels})")).unwrap_err();
        assert!(e.starts_with("the expression could take"), "{e}");
    }

    fn shape_of(e: &str) -> Vec<f64> {
        let p = cel::Program::compile(e).unwrap();
        Scope::default().shape(p.expression()).0
    }

    #[test]
    fn shapes_follow_lists_through_variables_indexes_and_macros() {
        assert_eq!(shape_of("filters"), [1024.0, 2.0, 256.0, 0.0]);
        assert_eq!(shape_of("filters.face"), [2.0, 256.0, 0.0]);
        assert_eq!(shape_of("filters['face'].labels"), [256.0, 0.0]);
        assert_eq!(shape_of("stages"), [32.0, 1.0, 0.0]);
        assert_eq!(shape_of("metadata"), [128.0, 0.0]);
        assert_eq!(shape_of("score"), [0.0]);
        assert_eq!(shape_of("[[1, 2, 3], [4]]"), [2.0, 3.0, 0.0]);
        assert_eq!(shape_of("{'a': [1, 2], 'b': 1}"), [2.0, 2.0, 0.0]);
        assert_eq!(shape_of("[1] + [[1, 2, 3]]"), [2.0, 3.0, 0.0]);
        assert_eq!(shape_of("[[1, 2]][0]"), [2.0, 0.0]);
        assert_eq!(shape_of("{'a': [1, 2, 3]}.a"), [3.0, 0.0]);
        assert_eq!(shape_of("true ? [1] : [1, 2]"), [2.0, 0.0]);
        // A macro's variable is a member of what it ranges over, whatever its name.
        assert_eq!(shape_of("[[1, 2, 3]].map(l, l + l)"), [1.0, 6.0, 0.0]);
        assert_eq!(
            shape_of("[[[1, 2]]].map(filters, filters)"),
            [1.0, 1.0, 2.0, 0.0]
        );
        assert_eq!(
            shape_of("[[1, 2, 3], [4]].filter(l, size(l) > 1)"),
            [2.0, 3.0, 0.0]
        );
        assert_eq!(shape_of("[1, 2].all(x, x > 0)"), [2.0, 0.0]);
        assert_eq!(shape_of("size([1, 2]) + 1"), [0.0]);
        // A function it does not know returns at least its arguments' shape.
        let long = format!("[{}]", ["0"; 300].join(","));
        assert_eq!(shape_of(&format!("dyn({long})")), [300.0, 256.0]);
        assert_eq!(shape_of("dyn(1)"), [256.0]);
    }

    /// A macro's variable bound to a long list written in the rule costs what the list
    /// costs written out in its place. Such a rule (3,854 characters, two macros over
    /// four copies of a list of 1,900) was estimated at 7 million steps, accepted, and
    /// took 34 s to evaluate once; it is now estimated at 534 million.
    #[test]
    fn lists_reached_through_macro_variables_cost_their_length() {
        let cost_of = |e: &str| cost(cel::Program::compile(e).unwrap().expression());
        let list = format!("[{}]", ["0"; 500].join(","));
        let bound = cost_of(&format!("[{list}].all(l, l.all(x, x == 0))"));
        let written = cost_of(&format!("{list}.all(x, x == 0)"));
        assert!(
            bound >= written && bound < written + 50.0,
            "{bound} {written}"
        );
        let twice = |v: &str| format!("[{list}].all(l, {v}.all(x, {v}.all(y, x == y)))");
        assert!(cost_of(&twice("l")) > 500.0 * 500.0 * 4.0);
        let refused = |rule: &str| {
            compile_rule(rule)
                .err()
                .is_some_and(|e| e.starts_with("the expression could take"))
        };
        assert!(refused(&twice("(l + l + l + l)")));
        let longer = format!("[{}]", ["0"; 1500].join(","));
        assert!(refused(&format!(
            "[{longer}].all(l, (l + l).all(x, x in l + l))"
        )));
        assert!(!refused(&format!("[{longer}].all(l, l.all(x, x == 0))")));
        // Comparing lists compares their items; appending to a macro's result does not
        // copy it.
        assert!(cost_of(&format!("{list} == {list}")) >= 500.0);
        assert!(cost_of(&format!("{list}.map(x, x)")) < 500.0 * 10.0);
    }

    #[test]
    fn compile_errors_are_short_and_point_at_the_place() {
        let e = compile_rule("score >= 0.5 &&\n  filters['a'].score >").unwrap_err();
        assert!(
            e.starts_with("CEL does not compile: 2:23: Syntax error: mismatched input '<EOF>'"),
            "{e}"
        );
        assert!(
            e.ends_with("\n|   filters['a'].score >\n|                       ^"),
            "{e}"
        );
        // The parser's own text repeats the whole line under each of its errors.
        let brackets = format!("{}score{}", "(".repeat(2000), ")".repeat(2000));
        let e = compile_rule(&brackets).unwrap_err();
        assert!(e.contains("Recursion limit of 96 exceeded"), "{e}");
        assert!(e.len() < 800, "{} bytes: {e}", e.len());
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines[1], format!("| …{}…", "(".repeat(80)));
        assert_eq!(lines[2], format!("| {}^", " ".repeat(41)));
    }

    #[test]
    fn variables_that_macros_bind_are_not_unknown() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}, {{use: kw, as: k2}}]\n    branches:\n      - when: \"filters.exists(k, filters[k].score > 0.9) && filters.all(k, k != 'x') && [1, 2].exists(score, score > 1)\"\n        decide: {{decision: REVIEW, reason: r}}\n      - when: \"filters.exists(k, k > 'a') && k > 0.1\"\n        decide: {{decision: REVIEW, reason: r}}\n"
        );
        assert_eq!(
            problems(&doc),
            [
                "stages[0].branches[1].when: unknown variable `k`; rules may use score, filters, stages, metadata"
            ]
        );
    }

    #[test]
    fn aliases_are_read_from_the_expression_not_its_text() {
        // `filters.exists` is a macro on the map, not alias `exists`; `'filters.nope'` is a
        // string; a macro's own `filters` shadows the variable.
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n    branches:\n      - when: \"filters.exists(k, k == 'kw') && metadata.note != 'filters.nope' && [{{'x': 1}}].all(filters, filters.x == 1)\"\n        decide: {{decision: REVIEW, reason: r}}\n      - when: \"filters.kw.score + filters['k9'].score + filters.k8.score + filters.k9.score > stages['zz'].score\"\n        decide: {{decision: REVIEW, reason: r}}\n"
        );
        assert_eq!(
            problems(&doc),
            [
                "stages[0].branches[1].when: no filter with alias `k9` in this or an earlier stage",
                "stages[0].branches[1].when: no filter with alias `k8` in this or an earlier stage",
                "stages[0].branches[1].when: no stage `zz` at or before `a`",
            ]
        );
    }

    #[test]
    fn unknown_aliases_and_later_stages_in_rules_are_named() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n    branches:\n      - when: \"filters['nope'].score > 0.1 || stages.b.score > 0.1\"\n        decide: {{decision: REVIEW, reason: r}}\n  - id: b\n    filters: [{{use: kw, as: k2}}]\n"
        );
        let p = problems(&doc);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("no filter with alias `nope`"), "{p:?}");
        assert!(p[1].contains("no stage `b` at or before `a`"), "{p:?}");
    }

    #[test]
    fn duplicate_ids_and_aliases_are_named() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}, {{use: kw}}]\n  - id: a\n    filters: [{{use: x}}]\n"
        );
        let p = problems(&doc);
        assert!(
            p.contains(&"stages[1].id: duplicate stage id `a` (also stages[0])".to_owned()),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.starts_with("stages[0].filters[1].as: duplicate alias `kw`")),
            "{p:?}"
        );
    }

    #[test]
    fn aggregators_are_checked() {
        let doc = format!(
            "{HEAD}stages:\n  - id: a\n    filters: [{{use: kw}}]\n    aggregate: median\n  - id: b\n    filters: [{{use: x}}]\n    aggregate: {{builtin: vote, k: 3}}\n  - id: c\n    filters: [{{use: y}}]\n    aggregate: {{builtin: weighted_mean, weights: {{zz: 1}}}}\n"
        );
        let p = problems(&doc);
        assert!(
            p[0].starts_with("stages[0].aggregate: unknown aggregator `median`"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("stages[1].aggregate.k: k = 3 but the stage has 1 filters"),
            "{p:?}"
        );
        assert!(
            p[2].starts_with("stages[2].aggregate.weights.zz: no filter with alias `zz`"),
            "{p:?}"
        );
    }

    #[test]
    fn limits_are_named() {
        let mut doc = format!("{HEAD}stages:\n  - id: a\n    filters:\n");
        for i in 0..33 {
            doc.push_str(&format!("      - {{use: f, as: f{i}}}\n"));
        }
        let p = problems(&doc);
        assert_eq!(p, vec!["stages[0].filters: 33 filters; the limit is 32"]);
    }

    #[test]
    fn rule_refs_finds_dot_and_index_forms() {
        let p = compile_rule(
            "filters.a.score + filters['b-c'].score + metadata.filters.z + filters.a.score > stages.s.score",
        )
        .unwrap();
        let refs = RuleRefs::of(p.expression());
        assert_eq!(refs.filters, ["a", "b-c"]);
        assert_eq!(refs.stages, ["s"]);
        assert_eq!(
            refs.variables.into_iter().collect::<Vec<_>>(),
            ["filters", "metadata", "stages"]
        );
    }
}
