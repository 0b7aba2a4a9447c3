import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { ApiError, type Chain, type DiscoveredFilter, type Principal, type Problem, chainstore, gateway, must } from "../api/client";
import { lineDiff } from "../lib/diff";
import { chainData } from "../lib/edit";
import { type Located, locate, outline } from "../lib/outline";
import { chainPath, navigate, onLink } from "../lib/router";
import { AddFilter } from "./addfilter";
import { AddStageForm, BranchRuleForm, ChainSettingsForm, FilterForm, StageForm } from "./forms";
import { DiffTable } from "./history";

const TEMPLATE = `name: my-chain
description: What this chain is for.
content_types: [text/plain]
defaults: {timeout: 800ms, retries: 1, on_error: review}
stages:
  - id: words
    filters:
      - use: keywords
        config: {words: [free money]}
    aggregate: max
    branches:
      - when: "score >= 0.9"
        decide: {decision: REJECT, reason: spam}
default_decision: APPROVE
`;

const toLocated = (p: Problem): Located => ({
  path: p.path ?? "",
  message: p.message ?? "",
  line: p.line || undefined,
});

export function Editor({ who, name }: { who: Principal; name?: string }) {
  const canWrite = who.role === "operator";
  const [doc, setDoc] = useState(name ? "" : TEMPLATE);
  const [base, setBase] = useState<Chain | null>(null);
  const [loadError, setLoadError] = useState("");
  const [problems, setProblems] = useState<Located[]>([]);
  const [warnings, setWarnings] = useState<Located[]>([]);
  const [checking, setChecking] = useState(false);
  const [comment, setComment] = useState("");
  const [saving, setSaving] = useState(false);
  const [saveError, setSaveError] = useState("");
  const [saved, setSaved] = useState("");
  const [conflict, setConflict] = useState<Chain | null>(null);
  const [filters, setFilters] = useState<DiscoveredFilter[]>([]);
  const [filtersError, setFiltersError] = useState("");
  const area = useRef<HTMLTextAreaElement>(null);
  const gutter = useRef<HTMLDivElement>(null);

  useEffect(() => {
    if (!name) return;
    chainstore
      .GET("/v1/chains/{name}", { params: { path: { name } } })
      .then((r) => {
        const c = must(r);
        setBase(c);
        setDoc(c.document ?? "");
      })
      .catch((e: Error) => setLoadError(e.message));
  }, [name]);

  useEffect(() => {
    if (!canWrite) return;
    gateway
      .GET("/v1/filters")
      .then((r) => setFilters((must(r).filters ?? []).filter((f) => f.descriptor)))
      .catch((e: Error) => setFiltersError(`cannot list the filters: ${e.message}`));
  }, [canWrite]);

  // Validate as the operator types (after a pause).
  useEffect(() => {
    if (!doc) return;
    setChecking(true);
    const t = setTimeout(async () => {
      try {
        const v = must(await chainstore.POST("/v1/chains:validate", { body: { document: doc } }));
        setProblems(locate(doc, (v.problems ?? []).map(toLocated)));
        setWarnings((v.warnings ?? []).map(toLocated));
      } catch (e) {
        setProblems([{ path: "", message: `cannot validate: ${(e as Error).message}` }]);
      } finally {
        setChecking(false);
      }
    }, 350);
    return () => clearTimeout(t);
  }, [doc]);

  const tree = useMemo(() => outline(doc, problems), [doc, problems]);
  const data = useMemo(() => chainData(doc), [doc]);
  const labelsOf = (name: string) => filters.find((f) => f.name === name)?.descriptor?.labels ?? [];
  const forms = canWrite && !tree.syntax;
  const badLines = useMemo(() => new Set(problems.map((p) => p.line).filter(Boolean)), [problems]);
  const lines = doc.split("\n").length;
  const dirty = base ? doc !== base.document : true;

  const goToLine = (line?: number) => {
    const a = area.current;
    if (!a || !line) return;
    const starts = doc.split("\n");
    let pos = 0;
    for (let i = 0; i < line - 1 && i < starts.length; i++) pos += starts[i].length + 1;
    a.focus();
    a.setSelectionRange(pos, pos + (starts[line - 1]?.length ?? 0));
    const lineHeight = a.scrollHeight / Math.max(1, lines);
    a.scrollTop = Math.max(0, (line - 5) * lineHeight);
  };

  const save = async (expected?: string) => {
    if (!canWrite || saving) return;
    setSaving(true);
    setSaveError("");
    setSaved("");
    try {
      let c: Chain;
      if (name && base) {
        c = must(
          await chainstore.PUT("/v1/chains/{name}", {
            params: { path: { name } },
            body: { document: doc, expectedVersion: expected ?? base.version ?? "0", comment },
          }),
        );
      } else {
        c = must(await chainstore.POST("/v1/chains", { body: { document: doc, comment } }));
      }
      setBase(c);
      setConflict(null);
      setComment("");
      setSaved(`Saved version ${c.version}.`);
      if (!name) navigate(chainPath(c.name ?? ""));
    } catch (e) {
      if (e instanceof ApiError && e.status === "ABORTED" && name) {
        // Someone saved first: show what they saved, never merge silently.
        try {
          setConflict(must(await chainstore.GET("/v1/chains/{name}", { params: { path: { name } } })));
        } catch {
          setSaveError((e as Error).message);
        }
      } else {
        setSaveError((e as Error).message);
      }
    } finally {
      setSaving(false);
    }
  };

  if (loadError) return <p class="error" role="alert">{loadError}</p>;
  if (name && !base) return <p>Loading…</p>;

  return (
    <section
      class="editor"
      onKeyDown={(e) => {
        if ((e.ctrlKey || e.metaKey) && e.key === "s") {
          e.preventDefault();
          void save();
        }
      }}
    >
      <div class="titlebar">
        <h1>{name ? <>Chain {name}</> : "New chain"}</h1>
        {base && <span class="muted">version {base.version}{dirty ? " · edited" : ""}</span>}
        {name && (
          <span class="links">
            <a href={chainPath(name, "history")} onClick={onLink}>
              History
            </a>
            <a href={chainPath(name, "try")} onClick={onLink}>
              Try it
            </a>
          </span>
        )}
      </div>
      {conflict && (
        <div class="conflict" role="alert">
          <h2>Someone saved first</h2>
          <p>
            Version {conflict.version} was saved by {conflict.author || "someone"}
            {conflict.comment ? ` (“${conflict.comment}”)` : ""} while you edited version {base?.version}. Your
            edit is not saved. What they changed against yours:
          </p>
          <DiffTable rows={lineDiff(doc, conflict.document ?? "")} labels={["yours", "theirs"]} />
          <div class="buttons">
            <button
              type="button"
              onClick={() => {
                setBase(conflict);
                setDoc(conflict.document ?? "");
                setConflict(null);
              }}
            >
              Take theirs (drop my edit)
            </button>
            <button type="button" class="danger" onClick={() => void save(conflict.version)}>
              Save mine over theirs
            </button>
          </div>
        </div>
      )}
      <div class="panes">
        <div class="yaml">
          <label for="chain-yaml" class="pane-title">
            YAML
          </label>
          <div class="code">
            <div class="gutter" ref={gutter} aria-hidden="true">
              {Array.from({ length: lines }, (_, i) => (
                <div class={badLines.has(i + 1) ? "bad" : undefined} key={i}>
                  {i + 1}
                </div>
              ))}
            </div>
            <textarea
              id="chain-yaml"
              ref={area}
              spellcheck={false}
              readOnly={!canWrite}
              value={doc}
              aria-invalid={problems.length > 0}
              aria-describedby="chain-problems"
              onInput={(e) => setDoc(e.currentTarget.value)}
              onScroll={(e) => {
                if (gutter.current) gutter.current.scrollTop = e.currentTarget.scrollTop;
              }}
              onKeyDown={(e) => {
                // Tab indents (YAML wants spaces); Escape then Tab leaves the editor.
                if (e.key === "Tab" && !e.shiftKey && !(e.currentTarget.dataset.escaped === "1")) {
                  e.preventDefault();
                  const a = e.currentTarget;
                  const s = a.selectionStart;
                  setDoc(doc.slice(0, s) + "  " + doc.slice(a.selectionEnd));
                  requestAnimationFrame(() => a.setSelectionRange(s + 2, s + 2));
                }
                e.currentTarget.dataset.escaped = e.key === "Escape" ? "1" : "0";
              }}
            />
          </div>
          <p class="hint">Tab indents; Esc then Tab moves on. Ctrl+S saves.</p>
        </div>
        <div class="outline" aria-label="Structure">
          <div class="pane-title">Structure {checking && <span class="muted">checking…</span>}</div>
          <div id="chain-problems" aria-live="polite">
            {tree.syntax && <p class="problem">YAML: {tree.syntax}</p>}
            {problems.length === 0 && !tree.syntax && !checking && <p class="ok">Valid.</p>}
            <ProblemList items={tree.problems} onPick={goToLine} />
          </div>
          {forms && <ChainSettingsForm doc={doc} data={data} onEdit={setDoc} />}
          {tree.stages.map((s, i) => (
            <div class="stage" key={i} data-path={`stages[${i}]`}>
              <div class="stage-head">
                <strong>{s.id}</strong> <span class="muted">aggregate {s.aggregate || "?"}</span>
              </div>
              {forms && <StageForm doc={doc} data={data} i={i} onEdit={setDoc} />}
              <ProblemList items={s.problems} onPick={goToLine} />
              <ul>
                {s.filters.map((f, j) => (
                  <li key={`f${j}`} data-path={`stages[${i}].filters[${j}]`}>
                    <span class="kind">filter</span> {f.label}
                    {forms && <FilterForm doc={doc} data={data} i={i} j={j} onEdit={setDoc} />}
                    <ProblemList items={f.problems} onPick={goToLine} />
                  </li>
                ))}
                {s.branches.map((b, j) => (
                  <li key={`b${j}`} data-path={`stages[${i}].branches[${j}]`}>
                    <span class="kind">branch</span> <code>{b.label}</code>
                    {forms && (
                      <BranchRuleForm doc={doc} data={data} i={i} j={j} labelsOf={labelsOf} onEdit={setDoc} summary={`Edit rule ${j + 1}`} />
                    )}
                    <ProblemList items={b.problems} onPick={goToLine} />
                  </li>
                ))}
              </ul>
              {forms && (
                <BranchRuleForm
                  doc={doc}
                  data={data}
                  i={i}
                  j={s.branches.length}
                  labelsOf={labelsOf}
                  onEdit={setDoc}
                  summary={`Add a rule to ${s.id}`}
                />
              )}
            </div>
          ))}
          {forms && <AddStageForm doc={doc} data={data} onEdit={setDoc} />}
          {forms && tree.stages.length > 0 && (
            <AddFilter doc={doc} stages={tree.stages.map((s) => s.id)} filters={filters} listError={filtersError} onAdd={setDoc} />
          )}
          {warnings.length > 0 && (
            <details>
              <summary>{warnings.length} check(s) not made</summary>
              <ProblemList items={warnings} onPick={goToLine} warn />
            </details>
          )}
        </div>
      </div>
      {canWrite ? (
        <form
          class="savebar"
          onSubmit={(e) => {
            e.preventDefault();
            void save();
          }}
        >
          <label>
            Comment
            <input value={comment} onInput={(e) => setComment(e.currentTarget.value)} placeholder="why this change" />
          </label>
          <button type="submit" disabled={saving || problems.length > 0 || !!tree.syntax || (!!name && !dirty)}>
            {saving ? "Saving…" : name ? "Save" : "Create"}
          </button>
          {saved && <span class="ok" role="status">{saved}</span>}
          {saveError && (
            <span class="error" role="alert">
              {saveError}
            </span>
          )}
        </form>
      ) : (
        <p class="muted">Read only: only operators change chains.</p>
      )}
    </section>
  );
}

function ProblemList({ items, onPick, warn }: { items: Located[]; onPick: (line?: number) => void; warn?: boolean }) {
  if (!items.length) return null;
  return (
    <ul class={warn ? "warnings" : "problems"}>
      {items.map((p, i) => (
        <li key={i} class="problem">
          <button type="button" class="link" onClick={() => onPick(p.line)} disabled={!p.line}>
            {p.line ? `line ${p.line}` : "chain"}
          </button>{" "}
          {p.path && <code>{p.path}</code>} {p.message}
        </li>
      ))}
    </ul>
  );
}
