// Edits of a chain document made by the editor's forms. Each takes the YAML text and
// returns the new text, changing only the nodes it names: comments and layout elsewhere
// are kept. Each throws an Error with a message for the operator when the YAML does not
// parse or the place it names is not there. What the chain means is left to the
// chainstore's validation, which places its problems at the fields they name.
import { type Document, isMap, isNode, isSeq, parseDocument } from "yaml";

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

export const BUILTIN_AGGREGATES = ["max", "min", "mean", "weighted_mean", "vote"] as const;
export const DECISIONS = ["APPROVE", "REJECT", "REVIEW"] as const;
export const ON_ERROR = ["review", "skip", "fail", "score"] as const;

/** A filter's or the chain's policy as the form holds it: empty means "not set". */
export interface PolicyForm {
  timeout: string;
  retries: string;
  backoff: string;
  /** "" (not set), review, skip, fail or score (with `onErrorScore`). */
  onError: string;
  onErrorScore: string;
}

export interface ChainSettings {
  description: string;
  contentTypes: string;
  defaultDecision: string;
  auditSampleRate: string;
  defaults: PolicyForm;
}

export interface AggregateForm {
  kind: "builtin" | "custom" | "remote";
  name: string;
  /** `alias: weight` per line or comma-separated (weighted_mean). */
  weights: string;
  k: string;
  threshold: string;
  /** JSON (custom and remote). */
  config: string;
}

export interface BranchForm {
  when: string;
  then: "goto" | "decide";
  goto: string;
  decision: string;
  reason: string;
}

export interface FilterOptions {
  alias: string;
  shadow: boolean;
  policy: PolicyForm;
}

/** Problems of a form, by field name. Empty when the form can be written. */
export type FormProblems = Record<string, string>;

function open(document: string): Document {
  const doc = parseDocument(document);
  if (doc.errors.length) throw new Error(`the YAML does not parse: ${doc.errors[0].message}`);
  return doc;
}

function write(doc: Document): string {
  // `[a]` and `{a: 1}` stay as the operator wrote them (no padding inside the brackets).
  return doc.toString({ flowCollectionPadding: false, lineWidth: 0 });
}

function need(doc: Document, path: (string | number)[], what: string) {
  if (!isNode(doc.getIn(path, true))) throw new Error(`there is no ${what}`);
}

/** The document as plain data, or null when it does not parse. */
export function chainData(document: string): Obj | null {
  const doc = parseDocument(document);
  if (doc.errors.length) return null;
  const v = doc.toJS() as unknown;
  return isObj(v) ? v : {};
}

const str = (v: unknown) => (v === undefined || v === null ? "" : String(v));

export function policyForm(v: unknown): PolicyForm {
  const p = isObj(v) ? v : {};
  const onError = p.on_error;
  return {
    timeout: str(p.timeout),
    retries: str(p.retries),
    backoff: str(p.backoff),
    onError: isObj(onError) ? "score" : str(onError),
    onErrorScore: isObj(onError) ? str(onError.score) : "",
  };
}

/** The policy fields a form sets, and its problems. */
export function policyFrom(f: PolicyForm, prefix = ""): { fields: Obj; problems: FormProblems } {
  const fields: Obj = {};
  const problems: FormProblems = {};
  const duration = /^\s*\d+(\.\d+)?\s*(ns|us|µs|ms|s|m|h)(\s*\d+(\.\d+)?\s*(ns|us|µs|ms|s|m|h))*\s*$/;
  for (const key of ["timeout", "backoff"] as const) {
    const t = f[key].trim();
    if (!t) continue;
    if (!duration.test(t)) problems[prefix + key] = "a duration such as 800ms, 2s or 1m";
    else fields[key] = t;
  }
  const r = f.retries.trim();
  if (r) {
    if (!/^\d+$/.test(r)) problems[prefix + "retries"] = "a whole number, 0 or more";
    else fields.retries = Number(r);
  }
  if (f.onError === "score") {
    const s = Number(f.onErrorScore);
    if (f.onErrorScore.trim() === "" || !Number.isFinite(s) || s < 0 || s > 1)
      problems[prefix + "on_error"] = "the score counted in the filter's place, from 0 to 1";
    else fields.on_error = { score: s };
  } else if (f.onError) {
    fields.on_error = f.onError;
  }
  return { fields, problems };
}

const POLICY_KEYS = ["timeout", "retries", "backoff", "on_error"];

/** Sets the policy fields of the map at `path`: given ones written, the others removed. */
function setPolicy(doc: Document, path: (string | number)[], fields: Obj, keep = false) {
  for (const key of POLICY_KEYS) {
    if (key in fields) doc.setIn([...path, key], doc.createNode(fields[key]));
    else if (!keep && doc.hasIn([...path, key])) doc.deleteIn([...path, key]);
  }
}

export function chainSettings(data: Obj | null): ChainSettings {
  const c = data ?? {};
  return {
    description: str(c.description),
    contentTypes: Array.isArray(c.content_types) ? c.content_types.map(String).join(", ") : "",
    defaultDecision: str(c.default_decision) || "REVIEW",
    auditSampleRate: str(c.audit_sample_rate),
    defaults: policyForm(c.defaults),
  };
}

/** Writes the chain-wide settings. */
export function setChainSettings(document: string, s: ChainSettings): { document: string; problems: FormProblems } {
  const problems: FormProblems = {};
  const types = s.contentTypes
    .split(",")
    .map((t) => t.trim())
    .filter(Boolean);
  if (!types.length) problems.content_types = "at least one content type, e.g. image/* or text/plain";
  const rate = s.auditSampleRate.trim();
  if (rate && !(Number(rate) >= 0 && Number(rate) <= 1)) problems.audit_sample_rate = "a share from 0 to 1";
  if (!(DECISIONS as readonly string[]).includes(s.defaultDecision)) problems.default_decision = "APPROVE, REJECT or REVIEW";
  const policy = policyFrom(s.defaults, "defaults.");
  Object.assign(problems, policy.problems);
  if (Object.keys(problems).length) return { document, problems };

  const doc = open(document);
  if (s.description.trim()) doc.set("description", s.description.trim());
  else doc.delete("description");
  const node = doc.createNode(types);
  node.flow = true;
  doc.set("content_types", node);
  if (rate && Number(rate) !== 0) doc.set("audit_sample_rate", Number(rate));
  else doc.delete("audit_sample_rate");
  doc.set("default_decision", s.defaultDecision);
  if (Object.keys(policy.fields).length) {
    if (!isMap(doc.get("defaults", true))) {
      const m = doc.createNode({});
      m.flow = true;
      doc.set("defaults", m);
    }
    setPolicy(doc, ["defaults"], policy.fields);
  } else {
    doc.delete("defaults");
  }
  return { document: write(doc), problems };
}

const STAGE_ID = /^[a-z0-9][a-z0-9_-]*$/;

function stageIds(doc: Document): string[] {
  const stages = doc.get("stages", true);
  if (!isSeq(stages)) return [];
  return stages.items.map((s) => (isMap(s) ? str(s.get("id")) : ""));
}

/** Adds a stage with the given id at position `at` (its filters still to be added). */
export function addStage(document: string, id: string, at: number): string {
  const doc = open(document);
  const ids = stageIds(doc);
  if (!STAGE_ID.test(id)) throw new Error("a stage id is lowercase letters, digits, - and _");
  if (ids.includes(id)) throw new Error(`there is already a stage ${id}`);
  const node = doc.createNode({ id, filters: [], aggregate: "max" });
  const stages = doc.get("stages", true);
  if (isSeq(stages)) stages.items.splice(Math.max(0, Math.min(at, stages.items.length)), 0, node);
  else doc.set("stages", doc.createNode([{ id, filters: [], aggregate: "max" }]));
  return write(doc);
}

export function removeStage(document: string, i: number): string {
  const doc = open(document);
  need(doc, ["stages", i], `stage ${i + 1}`);
  doc.deleteIn(["stages", i]);
  return write(doc);
}

/** Moves stage `i` by `delta` places (−1 up, +1 down). */
export function moveStage(document: string, i: number, delta: number): string {
  return moveItem(document, ["stages"], i, delta, "stage");
}

function moveItem(document: string, path: (string | number)[], i: number, delta: number, what: string): string {
  const doc = open(document);
  const seq = doc.getIn(path, true);
  if (!isSeq(seq) || !seq.items[i]) throw new Error(`there is no ${what} ${i + 1}`);
  const j = i + delta;
  if (j < 0 || j >= seq.items.length) return document;
  const [item] = seq.items.splice(i, 1);
  seq.items.splice(j, 0, item);
  return write(doc);
}

/** Renames stage `i`, and every `goto` that named it. */
export function renameStage(document: string, i: number, id: string): string {
  const doc = open(document);
  need(doc, ["stages", i], `stage ${i + 1}`);
  const ids = stageIds(doc);
  const old = ids[i];
  if (id === old) return document;
  if (!STAGE_ID.test(id)) throw new Error("a stage id is lowercase letters, digits, - and _");
  if (ids.includes(id)) throw new Error(`there is already a stage ${id}`);
  doc.setIn(["stages", i, "id"], id);
  ids.forEach((_, s) => {
    const branches = doc.getIn(["stages", s, "branches"], true);
    if (!isSeq(branches)) return;
    branches.items.forEach((_, b) => {
      if (str(doc.getIn(["stages", s, "branches", b, "goto"])) === old) doc.setIn(["stages", s, "branches", b, "goto"], id);
    });
  });
  return write(doc);
}

export function aggregateForm(v: unknown): AggregateForm {
  const blank: AggregateForm = { kind: "builtin", name: "max", weights: "", k: "", threshold: "", config: "" };
  if (typeof v === "string") return { ...blank, name: v };
  if (!isObj(v)) return blank;
  const kind = "custom" in v ? "custom" : "remote" in v ? "remote" : "builtin";
  const weights = isObj(v.weights)
    ? Object.entries(v.weights)
        .map(([k, w]) => `${k}: ${String(w)}`)
        .join(", ")
    : "";
  return {
    kind,
    name: str(v[kind]),
    weights,
    k: str(v.k),
    threshold: str(v.threshold),
    config: v.config === undefined ? "" : JSON.stringify(v.config),
  };
}

/** The `aggregate` value a form stands for, and its problems. */
export function aggregateFrom(f: AggregateForm): { value: unknown; problems: FormProblems } {
  const problems: FormProblems = {};
  const name = f.name.trim();
  if (!name) problems.name = "the aggregator's name";
  if (f.kind !== "builtin") {
    let config: unknown;
    if (f.config.trim()) {
      try {
        config = JSON.parse(f.config);
      } catch (e) {
        problems.config = `not JSON: ${(e as Error).message}`;
      }
    }
    const value: Obj = { [f.kind]: name };
    if (config !== undefined) value.config = config;
    return { value, problems };
  }
  const value: Obj = { builtin: name };
  if (name === "weighted_mean") {
    const weights: Record<string, number> = {};
    for (const part of f.weights.split(/[,\n]/).map((p) => p.trim()).filter(Boolean)) {
      const m = /^([^:\s]+)\s*:\s*(\S+)$/.exec(part);
      const w = m ? Number(m[2]) : NaN;
      if (!m || !Number.isFinite(w) || w < 0) {
        problems.weights = `“${part}”: write alias: weight, a number 0 or more`;
        break;
      }
      weights[m[1]] = w;
    }
    if (Object.keys(weights).length) value.weights = weights;
  }
  if (name === "vote") {
    const k = f.k.trim();
    if (!/^[1-9]\d*$/.test(k)) problems.k = "how many filters must vote, 1 or more";
    else value.k = Number(k);
    const t = f.threshold.trim();
    if (t) {
      if (!(Number(t) >= 0 && Number(t) <= 1)) problems.threshold = "a score from 0 to 1";
      else value.threshold = Number(t);
    }
  }
  // A plain built-in is written as its name, the short form.
  return { value: Object.keys(value).length === 1 ? name : value, problems };
}

export function setAggregate(document: string, stage: number, value: unknown): string {
  const doc = open(document);
  need(doc, ["stages", stage], `stage ${stage + 1}`);
  const node = doc.createNode(value);
  if (isMap(node)) node.flow = true;
  doc.setIn(["stages", stage, "aggregate"], node);
  return write(doc);
}

export function branchForm(v: unknown): BranchForm {
  const b = isObj(v) ? v : {};
  const decide = isObj(b.decide) ? b.decide : {};
  return {
    when: str(b.when),
    then: b.goto !== undefined ? "goto" : "decide",
    goto: str(b.goto),
    decision: str(decide.decision) || "REVIEW",
    reason: str(decide.reason),
  };
}

export function branchFrom(f: BranchForm): { value: Obj; problems: FormProblems } {
  const problems: FormProblems = {};
  if (!f.when.trim()) problems.when = "a CEL expression, e.g. score >= 0.9";
  let value: Obj;
  if (f.then === "goto") {
    if (!f.goto) problems.goto = "the later stage to go to";
    value = { when: f.when.trim(), goto: f.goto };
  } else {
    if (!(DECISIONS as readonly string[]).includes(f.decision)) problems.decision = "APPROVE, REJECT or REVIEW";
    if (!f.reason.trim()) problems.reason = "the reason the answer gives, e.g. spam";
    value = { when: f.when.trim(), decide: { decision: f.decision, reason: f.reason.trim() } };
  }
  return { value, problems };
}

/** Sets branch `j` of stage `stage`, or adds it at the end when `j` is past the last. */
export function setBranch(document: string, stage: number, j: number, value: Obj): string {
  const doc = open(document);
  need(doc, ["stages", stage], `stage ${stage + 1}`);
  const node = doc.createNode(value);
  const decide = node.get("decide", true);
  if (isMap(decide)) decide.flow = true;
  const branches = doc.getIn(["stages", stage, "branches"], true);
  if (isSeq(branches)) {
    if (j < branches.items.length) branches.items[j] = node;
    else branches.items.push(node);
  } else {
    doc.setIn(["stages", stage, "branches"], doc.createNode([value]));
    const d = doc.getIn(["stages", stage, "branches", 0, "decide"], true);
    if (isMap(d)) d.flow = true;
  }
  return write(doc);
}

export function removeBranch(document: string, stage: number, j: number): string {
  const doc = open(document);
  need(doc, ["stages", stage, "branches", j], `branch ${j + 1} in stage ${stage + 1}`);
  doc.deleteIn(["stages", stage, "branches", j]);
  const left = doc.getIn(["stages", stage, "branches"], true);
  if (isSeq(left) && left.items.length === 0) doc.deleteIn(["stages", stage, "branches"]);
  return write(doc);
}

export function moveBranch(document: string, stage: number, j: number, delta: number): string {
  return moveItem(document, ["stages", stage, "branches"], j, delta, "branch");
}

export function filterOptions(v: unknown): FilterOptions {
  const f = isObj(v) ? v : {};
  return { alias: str(f.as), shadow: f.shadow === true, policy: policyForm(f) };
}

/** Sets a filter's alias, shadow flag and policy (its `use` and `config` are kept). */
export function setFilterOptions(
  document: string,
  stage: number,
  j: number,
  o: FilterOptions,
): { document: string; problems: FormProblems } {
  const policy = policyFrom(o.policy);
  const problems: FormProblems = { ...policy.problems };
  const alias = o.alias.trim();
  if (/\s/.test(alias)) problems.as = "an alias has no spaces";
  if (Object.keys(problems).length) return { document, problems };
  const doc = open(document);
  const path = ["stages", stage, "filters", j];
  need(doc, path, `filter ${j + 1} in stage ${stage + 1}`);
  const use = str(doc.getIn([...path, "use"]));
  if (alias && alias !== use) doc.setIn([...path, "as"], alias);
  else if (doc.hasIn([...path, "as"])) doc.deleteIn([...path, "as"]);
  if (o.shadow) doc.setIn([...path, "shadow"], true);
  else if (doc.hasIn([...path, "shadow"])) doc.deleteIn([...path, "shadow"]);
  setPolicy(doc, path, policy.fields);
  return { document: write(doc), problems };
}

export function removeFilter(document: string, stage: number, j: number): string {
  const doc = open(document);
  need(doc, ["stages", stage, "filters", j], `filter ${j + 1} in stage ${stage + 1}`);
  doc.deleteIn(["stages", stage, "filters", j]);
  return write(doc);
}

/**
 * What a branch rule of stage `stage` can read, as CEL snippets: the stage's score, each
 * filter's score and labels (the labels its descriptor lists), the earlier stages'
 * scores, and the item's metadata.
 */
export function celVariables(data: Obj | null, stage: number, labelsOf: (filter: string) => string[]): string[] {
  const stages = Array.isArray(data?.stages) ? (data.stages as unknown[]) : [];
  const out = ["score"];
  // `filters` holds the counted filters of this stage and the earlier ones.
  for (const s of stages.slice(0, stage + 1)) {
    const st = isObj(s) ? s : {};
    for (const f of Array.isArray(st.filters) ? st.filters : []) {
      if (!isObj(f) || !f.use) continue;
      const at = field("filters", str(f.as) || str(f.use));
      out.push(`${at}.score`);
      for (const l of labelsOf(str(f.use))) out.push(`${at}.labels[${JSON.stringify(l)}]`);
    }
  }
  for (const s of stages.slice(0, stage)) if (isObj(s) && s.id) out.push(`${field("stages", str(s.id))}.score`);
  out.push('metadata["key"]');
  return out;
}

/** `filters.name`, or `filters["face-detect"]` where the name is not a CEL identifier. */
function field(map: string, key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `${map}.${key}` : `${map}[${JSON.stringify(key)}]`;
}
