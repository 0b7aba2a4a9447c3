// The editor's forms for the parts of a chain: its settings, stages (with their
// aggregator), filters' options and policy, and branch rules with CEL help. Each form
// writes the YAML through src/lib/edit.ts; the YAML stays the source of truth and the
// chainstore's validation still has the last word, shown at the field it names.
import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import {
  type AggregateForm,
  BUILTIN_AGGREGATES,
  type BranchForm,
  type ChainSettings,
  DECISIONS,
  type FilterOptions,
  type FormProblems,
  ON_ERROR,
  type PolicyForm,
  addStage,
  aggregateForm,
  aggregateFrom,
  branchForm,
  branchFrom,
  celVariables,
  chainSettings,
  filterOptions,
  moveBranch,
  moveStage,
  removeBranch,
  removeFilter,
  removeStage,
  renameStage,
  setAggregate,
  setBranch,
  setChainSettings,
  setFilterOptions,
} from "../lib/edit";

type Obj = Record<string, unknown>;
type Edit = (next: string) => void;

/** A disclosure whose body exists only while open, so each opening starts from the YAML. */
export function Disclosure({
  summary,
  class: cls,
  children,
}: {
  summary: ComponentChildren;
  class?: string;
  children: (close: () => void) => ComponentChildren;
}) {
  const [open, setOpen] = useState(false);
  return (
    <details class={`form ${cls ?? ""}`} open={open} onToggle={(e) => setOpen(e.currentTarget.open)}>
      <summary>{summary}</summary>
      {open && children(() => setOpen(false))}
    </details>
  );
}

function Problem({ text }: { text?: string }) {
  return text ? (
    <span class="error" role="alert">
      {text}
    </span>
  ) : null;
}

function TextField(p: {
  id: string;
  label: string;
  value: string;
  problem?: string;
  hint?: string;
  onValue: (v: string) => void;
}) {
  return (
    <div class="field">
      <label for={p.id}>{p.label}</label>
      <input
        id={p.id}
        type="text"
        value={p.value}
        aria-invalid={!!p.problem}
        onInput={(e) => p.onValue(e.currentTarget.value)}
      />
      {p.hint && <span class="hint">{p.hint}</span>}
      <Problem text={p.problem && `${p.label}: ${p.problem}`} />
    </div>
  );
}

function SelectField(p: {
  id: string;
  label: string;
  value: string;
  options: readonly string[];
  names?: Record<string, string>;
  problem?: string;
  onValue: (v: string) => void;
}) {
  return (
    <div class="field">
      <label for={p.id}>{p.label}</label>
      <select id={p.id} value={p.value} onChange={(e) => p.onValue(e.currentTarget.value)}>
        {p.options.map((o) => (
          <option value={o} key={o}>
            {p.names?.[o] ?? o}
          </option>
        ))}
      </select>
      <Problem text={p.problem && `${p.label}: ${p.problem}`} />
    </div>
  );
}

/** Timeout, retries, backoff and on_error; empty fields fall back to the chain's defaults. */
function PolicyFields({
  id,
  value: v,
  problems,
  prefix = "",
  onValue,
  inherit,
}: {
  id: string;
  value: PolicyForm;
  problems: FormProblems;
  prefix?: string;
  onValue: (v: PolicyForm) => void;
  inherit: string;
}) {
  const set = (k: keyof PolicyForm) => (x: string) => onValue({ ...v, [k]: x });
  return (
    <fieldset>
      <legend>Policy</legend>
      <TextField id={`${id}-timeout`} label="timeout" value={v.timeout} hint={`e.g. 800ms; empty: ${inherit}`} problem={problems[`${prefix}timeout`]} onValue={set("timeout")} />
      <TextField id={`${id}-retries`} label="retries" value={v.retries} hint="on retryable codes only" problem={problems[`${prefix}retries`]} onValue={set("retries")} />
      <TextField id={`${id}-backoff`} label="backoff" value={v.backoff} hint="first wait; doubles, with jitter" problem={problems[`${prefix}backoff`]} onValue={set("backoff")} />
      <SelectField
        id={`${id}-on-error`}
        label="on_error"
        value={v.onError}
        options={["", ...ON_ERROR]}
        names={{ "": `(${inherit})`, review: "review: the item goes to REVIEW", skip: "skip: left out of the stage", fail: "fail: the call fails", score: "score: counts as a score" }}
        problem={problems[`${prefix}on_error`]}
        onValue={set("onError")}
      />
      {v.onError === "score" && (
        <TextField id={`${id}-on-error-score`} label="score on error" hint="0 to 1" value={v.onErrorScore} onValue={set("onErrorScore")} />
      )}
    </fieldset>
  );
}

function Apply({ label, error }: { label: string; error: string }) {
  return (
    <div class="buttons">
      <button type="submit">{label}</button>
      <Problem text={error} />
    </div>
  );
}

/** What an edit gives: the new document (null: nothing to write) and the form's problems. */
type Outcome = { document: string | null; problems?: FormProblems };

/**
 * A form's problems and error, and how it applies an edit: `submit` for the form's own
 * edit (nothing is written while it has problems), `run` for a button's. A thrown
 * message becomes the form's error; a written edit closes the form.
 */
function useEdit(onEdit: Edit, close: () => void) {
  const [problems, setProblems] = useState<FormProblems>({});
  const [error, setError] = useState("");
  const apply = (make: () => Outcome) => {
    try {
      const r = make();
      setProblems(r.problems ?? {});
      if (r.document === null || Object.keys(r.problems ?? {}).length) return;
      onEdit(r.document);
      setError("");
      close();
    } catch (e) {
      setError((e as Error).message);
    }
  };
  return {
    problems,
    error,
    submit: (make: () => Outcome) => (e: Event) => {
      e.preventDefault();
      apply(make);
    },
    run: (edit: () => string) => () => apply(() => ({ document: edit() })),
  };
}

/** The outcome of an edit that may only run once a form's own checks pass. */
const unless = (problems: FormProblems, edit: () => string): Outcome =>
  Object.keys(problems).length ? { document: null, problems } : { document: edit(), problems };

export function ChainSettingsForm({ doc, data, onEdit }: { doc: string; data: Obj | null; onEdit: Edit }) {
  return (
    <Disclosure summary="Chain settings" class="chain-settings">
      {(close) => <ChainSettingsBody doc={doc} data={data} onEdit={onEdit} close={close} />}
    </Disclosure>
  );
}

function ChainSettingsBody({ doc, data, onEdit, close }: { doc: string; data: Obj | null; onEdit: Edit; close: () => void }) {
  const [v, setV] = useState<ChainSettings>(() => chainSettings(data));
  const form = useEdit(onEdit, close);
  const { problems, error } = form;
  const set = (k: keyof ChainSettings) => (x: string) => setV({ ...v, [k]: x });
  return (
    <form
      onSubmit={form.submit(() => setChainSettings(doc, v))}
    >
      <TextField id="cs-description" label="description" value={v.description} onValue={set("description")} />
      <TextField id="cs-content-types" label="content types" value={v.contentTypes} hint="comma-separated; image/* allowed" problem={problems.content_types} onValue={set("contentTypes")} />
      <SelectField id="cs-default-decision" label="default decision" value={v.defaultDecision} options={DECISIONS} problem={problems.default_decision} onValue={set("defaultDecision")} />
      <TextField id="cs-audit" label="audit sample rate" value={v.auditSampleRate} hint="share of APPROVE marked for a human spot check, 0 to 1" problem={problems.audit_sample_rate} onValue={set("auditSampleRate")} />
      <PolicyFields id="cs-defaults" value={v.defaults} problems={problems} prefix="defaults." inherit="built-in default" onValue={(d) => setV({ ...v, defaults: d })} />
      <Apply label="Apply chain settings" error={error} />
    </form>
  );
}

/** Rename, aggregator, order and removal of stage `i`. */
export function StageForm({ doc, data, i, onEdit }: { doc: string; data: Obj | null; i: number; onEdit: Edit }) {
  const stages = Array.isArray(data?.stages) ? (data.stages as Obj[]) : [];
  const stage = stages[i] ?? {};
  const id = String(stage.id ?? `#${i + 1}`);
  return (
    <Disclosure summary={<>Edit stage {id}</>} class="stage-form">
      {(close) => <StageBody doc={doc} stage={stage} i={i} count={stages.length} onEdit={onEdit} close={close} />}
    </Disclosure>
  );
}

function StageBody({ doc, stage, i, count, onEdit, close }: { doc: string; stage: Obj; i: number; count: number; onEdit: Edit; close: () => void }) {
  const [id, setId] = useState(String(stage.id ?? ""));
  const [agg, setAgg] = useState<AggregateForm>(() => aggregateForm(stage.aggregate));
  const form = useEdit(onEdit, close);
  const { problems, error } = form;
  const [confirm, setConfirm] = useState(false);
  const p = `st${i}`;
  const aliases = (Array.isArray(stage.filters) ? stage.filters : []).map((f: Obj) => String(f.as ?? f.use ?? ""));
  const setA = (k: keyof AggregateForm) => (x: string) => setAgg({ ...agg, [k]: x });
  return (
    <form
      onSubmit={form.submit(() => {
        const a = aggregateFrom(agg);
        return unless(a.problems, () => setAggregate(renameStage(doc, i, id.trim()), i, a.value));
      })}
    >
      <TextField id={`${p}-id`} label="stage id" value={id} hint="rules that go to this stage follow a rename" onValue={setId} />
      <fieldset>
        <legend>Aggregator</legend>
        <SelectField
          id={`${p}-agg-kind`}
          label="aggregator kind"
          value={agg.kind}
          options={["builtin", "custom", "remote"]}
          names={{ builtin: "built in", custom: "custom (registered in code)", remote: "remote Aggregator service" }}
          onValue={(k) => setAgg({ ...agg, kind: k as AggregateForm["kind"], name: k === "builtin" ? "max" : "" })}
        />
        {agg.kind === "builtin" ? (
          <SelectField id={`${p}-agg-name`} label="aggregator" value={agg.name} options={BUILTIN_AGGREGATES} onValue={setA("name")} />
        ) : (
          <TextField id={`${p}-agg-name`} label="aggregator" value={agg.name} problem={problems.name} onValue={setA("name")} />
        )}
        {agg.kind === "builtin" && agg.name === "weighted_mean" && (
          <TextField
            id={`${p}-agg-weights`}
            label="weights"
            value={agg.weights}
            hint={`alias: weight, comma-separated; aliases here: ${aliases.join(", ") || "none yet"}`}
            problem={problems.weights}
            onValue={setA("weights")}
          />
        )}
        {agg.kind === "builtin" && agg.name === "vote" && (
          <>
            <TextField id={`${p}-agg-k`} label="k" value={agg.k} hint={`how many of the ${aliases.length} filters must vote`} problem={problems.k} onValue={setA("k")} />
            <TextField id={`${p}-agg-threshold`} label="threshold" value={agg.threshold} hint="a filter votes at or above this score (0.5 if empty)" problem={problems.threshold} onValue={setA("threshold")} />
          </>
        )}
        {agg.kind !== "builtin" && (
          <TextField id={`${p}-agg-config`} label="config" value={agg.config} hint="JSON, optional" problem={problems.config} onValue={setA("config")} />
        )}
      </fieldset>
      <Apply label={`Apply to stage ${String(stage.id ?? i + 1)}`} error={error} />
      <div class="buttons">
        <button type="button" disabled={i === 0} onClick={form.run(() => moveStage(doc, i, -1))}>
          Move stage up
        </button>
        <button type="button" disabled={i === count - 1} onClick={form.run(() => moveStage(doc, i, 1))}>
          Move stage down
        </button>
        {confirm ? (
          <button type="button" class="danger" onClick={form.run(() => removeStage(doc, i))}>
            Confirm: remove stage {String(stage.id ?? i + 1)}
          </button>
        ) : (
          <button type="button" onClick={() => setConfirm(true)}>
            Remove stage
          </button>
        )}
      </div>
    </form>
  );
}

export function AddStageForm({ doc, data, onEdit }: { doc: string; data: Obj | null; onEdit: Edit }) {
  const ids = (Array.isArray(data?.stages) ? (data.stages as Obj[]) : []).map((s) => String(s.id ?? ""));
  return (
    <Disclosure summary="Add a stage" class="add-stage">
      {(close) => <AddStageBody doc={doc} ids={ids} onEdit={onEdit} close={close} />}
    </Disclosure>
  );
}

function AddStageBody({ doc, ids, onEdit, close }: { doc: string; ids: string[]; onEdit: Edit; close: () => void }) {
  const [id, setId] = useState("");
  const [at, setAt] = useState(String(ids.length));
  const form = useEdit(onEdit, close);
  const { error } = form;
  return (
    <form
      onSubmit={form.submit(() => ({ document: addStage(doc, id.trim(), Number(at)) }))}
    >
      <TextField id="ns-id" label="new stage id" value={id} hint="a-z, 0-9, - and _; then add its filters" onValue={setId} />
      <SelectField
        id="ns-at"
        label="position"
        value={at}
        options={ids.map((_, i) => String(i)).concat(String(ids.length))}
        names={Object.fromEntries(ids.map((s, i) => [String(i), `before ${s}`]).concat([[String(ids.length), "at the end"]]))}
        onValue={setAt}
      />
      <Apply label="Add the stage" error={error} />
    </form>
  );
}

/** Alias, shadow and policy of filter `j` of stage `i`, or its removal. */
export function FilterForm({ doc, data, i, j, onEdit }: { doc: string; data: Obj | null; i: number; j: number; onEdit: Edit }) {
  const stage = (Array.isArray(data?.stages) ? (data.stages as Obj[]) : [])[i] ?? {};
  const f = (Array.isArray(stage.filters) ? (stage.filters as Obj[]) : [])[j] ?? {};
  return (
    <Disclosure summary={<>Edit {String(f.as ?? f.use ?? "filter")}</>} class="filter-form">
      {(close) => <FilterBody doc={doc} f={f} i={i} j={j} onEdit={onEdit} close={close} />}
    </Disclosure>
  );
}

function FilterBody({ doc, f, i, j, onEdit, close }: { doc: string; f: Obj; i: number; j: number; onEdit: Edit; close: () => void }) {
  const [v, setV] = useState<FilterOptions>(() => filterOptions(f));
  const form = useEdit(onEdit, close);
  const { problems, error } = form;
  const p = `f${i}-${j}`;
  const name = String(f.as ?? f.use ?? "filter");
  return (
    <form
      onSubmit={form.submit(() => setFilterOptions(doc, i, j, v))}
    >
      <TextField id={`${p}-as`} label="as" value={v.alias} hint={`the name rules use; empty: ${String(f.use ?? "")}`} problem={problems.as} onValue={(a) => setV({ ...v, alias: a })} />
      <div class="field">
        <label for={`${p}-shadow`}>shadow</label>
        <input id={`${p}-shadow`} type="checkbox" checked={v.shadow} onChange={(e) => setV({ ...v, shadow: e.currentTarget.checked })} />
        <span class="hint">run and report, never count: for a candidate model</span>
      </div>
      <PolicyFields id={p} value={v.policy} problems={problems} onValue={(x) => setV({ ...v, policy: x })} inherit="the chain's default" />
      <Apply label={`Apply to ${name}`} error={error} />
      <div class="buttons">
        <button type="button" onClick={form.run(() => removeFilter(doc, i, j))}>
          Remove {name}
        </button>
      </div>
    </form>
  );
}

/** What the branch rule form works on: branch `j` of stage `i` in `doc`. */
interface BranchProps {
  doc: string;
  data: Obj | null;
  i: number;
  j: number;
  labelsOf: (filter: string) => string[];
  onEdit: Edit;
}

/** Edits branch `j` of stage `i`; `j` past the last adds one. */
export function BranchRuleForm({ summary, ...props }: BranchProps & { summary: ComponentChildren }) {
  return (
    <Disclosure summary={summary} class="branch-form">
      {(close) => <BranchBody {...props} close={close} />}
    </Disclosure>
  );
}

function BranchBody({ doc, data, i, j, labelsOf, onEdit, close }: BranchProps & { close: () => void }) {
  const stages = Array.isArray(data?.stages) ? (data.stages as Obj[]) : [];
  const branches = Array.isArray(stages[i]?.branches) ? (stages[i].branches as unknown[]) : [];
  const isNew = j >= branches.length;
  const [v, setV] = useState<BranchForm>(() =>
    isNew ? { when: "", then: "decide", goto: "", decision: "REVIEW", reason: "" } : branchForm(branches[j]),
  );
  const form = useEdit(onEdit, close);
  const { problems, error } = form;
  const p = `b${i}-${j}`;
  const later = stages.slice(i + 1).map((s) => String(s.id ?? ""));
  const vars = celVariables(data, i, labelsOf);
  const set = (k: keyof BranchForm) => (x: string) => setV({ ...v, [k]: x });
  return (
    <form
      onSubmit={form.submit(() => {
        const r = branchFrom(v);
        return unless(r.problems, () => setBranch(doc, i, j, r.value));
      })}
    >
      <div class="field">
        <label for={`${p}-when`}>when (CEL)</label>
        <textarea id={`${p}-when`} rows={2} spellcheck={false} value={v.when} aria-invalid={!!problems.when} onInput={(e) => set("when")(e.currentTarget.value)} />
        <span class="hint">
          The first rule that holds acts; none: the next stage. Insert:{" "}
          {vars.map((x) => (
            <button type="button" class="chip" key={x} onClick={() => set("when")(v.when ? `${v.when.trimEnd()} ${x}` : x)}>
              {x}
            </button>
          ))}{" "}
          Operators: <code>&gt;= &lt; == && || !</code>, <code>"k" in metadata</code>.
        </span>
        <Problem text={problems.when && `when: ${problems.when}`} />
      </div>
      <SelectField
        id={`${p}-then`}
        label="then"
        value={v.then}
        options={["decide", "goto"]}
        names={{ decide: "decide", goto: "go to a later stage" }}
        onValue={(t) => setV({ ...v, then: t as BranchForm["then"], goto: v.goto || later[0] || "" })}
      />
      {v.then === "goto" ? (
        later.length ? (
          <SelectField id={`${p}-goto`} label="goto" value={v.goto} options={later} problem={problems.goto} onValue={set("goto")} />
        ) : (
          <p class="error" role="alert">
            There is no later stage to go to: add one first.
          </p>
        )
      ) : (
        <>
          <SelectField id={`${p}-decision`} label="decision" value={v.decision} options={DECISIONS} problem={problems.decision} onValue={set("decision")} />
          <TextField id={`${p}-reason`} label="reason" value={v.reason} problem={problems.reason} onValue={set("reason")} />
        </>
      )}
      <Apply label={isNew ? "Add the rule" : "Apply the rule"} error={error} />
      {!isNew && (
        <div class="buttons">
          <button type="button" disabled={j === 0} onClick={form.run(() => moveBranch(doc, i, j, -1))}>
            Move rule up
          </button>
          <button type="button" disabled={j === branches.length - 1} onClick={form.run(() => moveBranch(doc, i, j, 1))}>
            Move rule down
          </button>
          <button type="button" onClick={form.run(() => removeBranch(doc, i, j))}>
            Remove rule
          </button>
        </div>
      )}
    </form>
  );
}
