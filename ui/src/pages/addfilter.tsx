import { useMemo, useState } from "preact/hooks";
import type { DiscoveredFilter } from "../api/client";
import { addFilter } from "../lib/outline";
import { type Field, configFrom, fieldsOf, show } from "../lib/schemaform";

/** Adds a filter that discovery found to a stage, its config drawn from its JSON Schema. */
export function AddFilter({
  doc,
  stages,
  filters,
  listError,
  onAdd,
}: {
  doc: string;
  stages: string[];
  /** What discovery found (with a descriptor). */
  filters: DiscoveredFilter[];
  listError: string;
  onAdd: (doc: string) => void;
}) {
  const [error, setError] = useState("");
  const [name, setName] = useState("");
  const [stage, setStage] = useState(0);
  const [alias, setAlias] = useState("");
  const [texts, setTexts] = useState<Record<string, string>>({});
  const [problems, setProblems] = useState<Record<string, string>>({});

  const chosen = filters.find((f) => f.name === name);
  const fields: Field[] = useMemo(() => fieldsOf(chosen?.descriptor?.configSchema ?? ""), [chosen]);
  // Choosing a filter resets the form in the same event, never later (an effect could
  // run after the operator has started typing and wipe what they typed).
  const choose = (next: string) => {
    const f = filters.find((x) => x.name === next);
    const nextFields = fieldsOf(f?.descriptor?.configSchema ?? "");
    setName(next);
    setTexts(Object.fromEntries(nextFields.map((x) => [x.name, show(x, x.default)])));
    setProblems({});
    setAlias(next);
  };

  const add = () => {
    const { config, problems } = configFrom(fields, texts);
    setProblems(problems);
    if (Object.keys(problems).length) return;
    try {
      onAdd(addFilter(doc, stage, name, alias.trim(), config));
      setError("");
    } catch (e) {
      setError((e as Error).message);
    }
  };

  return (
    <details class="addfilter">
      <summary>Add a filter</summary>
      {(error || listError) && (
        <p class="error" role="alert">
          {error || listError}
        </p>
      )}
      <div class="row">
        <span class="cell">
          <label for="af-filter">Filter</label>
          <select id="af-filter" value={name} onChange={(e) => choose(e.currentTarget.value)}>
            <option value="">choose…</option>
            {filters.map((f) => (
              <option value={f.name} key={f.name}>
                {f.name} {f.descriptor?.version}
              </option>
            ))}
          </select>
        </span>
        <span class="cell">
          <label for="af-stage">To stage</label>
          <select id="af-stage" value={stage} onChange={(e) => setStage(Number(e.currentTarget.value))}>
            {stages.map((s, i) => (
              <option value={i} key={i}>
                {s}
              </option>
            ))}
          </select>
        </span>
        <span class="cell">
          <label for="af-alias">As</label>
          <input id="af-alias" value={alias} onInput={(e) => setAlias(e.currentTarget.value)} />
        </span>
      </div>
      {chosen && (
        <>
          <p class="muted">accepts {(chosen.descriptor?.contentTypes ?? []).join(", ")}; only values other than the defaults are written.</p>
          <div class="fields">
            {fields.map((f) => (
              <FieldInput
                key={f.name}
                field={f}
                text={texts[f.name] ?? ""}
                problem={problems[f.name]}
                onText={(t) => setTexts({ ...texts, [f.name]: t })}
              />
            ))}
          </div>
          <button type="button" onClick={add}>
            Add {name} to {stages[stage] ?? "the stage"}
          </button>
        </>
      )}
    </details>
  );
}

function FieldInput({ field: f, text, problem, onText }: { field: Field; text: string; problem?: string; onText: (t: string) => void }) {
  const id = `cfg-${f.name}`;
  const hint = [f.description, f.kind === "strings" ? "comma-separated" : "", f.kind === "json" ? "JSON" : ""]
    .filter(Boolean)
    .join(" · ");
  let input;
  if (f.kind === "boolean")
    input = <input id={id} type="checkbox" checked={text === "true"} onChange={(e) => onText(String(e.currentTarget.checked))} />;
  else if (f.kind === "enum")
    input = (
      <select id={id} value={text} onChange={(e) => onText(e.currentTarget.value)}>
        {f.options.map((o) => (
          <option key={o}>{o}</option>
        ))}
      </select>
    );
  else if (f.kind === "number" || f.kind === "integer")
    input = (
      <input
        id={id}
        type="number"
        step={f.kind === "integer" ? 1 : "any"}
        min={f.min}
        max={f.max}
        value={text}
        aria-invalid={!!problem}
        onInput={(e) => onText(e.currentTarget.value)}
      />
    );
  else
    input = (
      <input id={id} type="text" value={text} aria-invalid={!!problem} onInput={(e) => onText(e.currentTarget.value)} />
    );
  return (
    <div class="field">
      <label for={id}>{f.name}</label>
      {input}
      {hint && <span class="hint">{hint}</span>}
      {problem && (
        <span class="error" role="alert">
          {f.name}: {problem}
        </span>
      )}
    </div>
  );
}
