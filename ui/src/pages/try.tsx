import { useEffect, useRef, useState } from "preact/hooks";
import { type FilterTrace, type ModerateResponse, gateway, must } from "../api/client";
import { collectBoxes } from "../lib/boxes";
import { chainPath, onLink } from "../lib/router";

const MAX_BYTES = 10 << 20;

export function Try({ name }: { name: string }) {
  const [mode, setMode] = useState<"text" | "image">("text");
  const [text, setText] = useState("");
  const [file, setFile] = useState<File | null>(null);
  const [preview, setPreview] = useState("");
  const [natural, setNatural] = useState<[number, number]>([0, 0]);
  const [result, setResult] = useState<ModerateResponse | null>(null);
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  const [over, setOver] = useState(false);
  const input = useRef<HTMLInputElement>(null);

  useEffect(() => () => preview && URL.revokeObjectURL(preview), [preview]);

  const pick = (f: File | undefined) => {
    if (!f) return;
    setError("");
    setResult(null);
    if (f.size > MAX_BYTES) {
      setError(`${f.name} is ${Math.round(f.size / 1024)} KiB; the limit here is ${MAX_BYTES >> 20} MiB`);
      return;
    }
    setFile(f);
    setPreview(URL.createObjectURL(f));
    setMode("image");
  };

  const run = async () => {
    setBusy(true);
    setError("");
    setResult(null);
    try {
      let content;
      if (mode === "text") content = { contentType: "text/plain", text };
      else if (file) content = { contentType: file.type || "application/octet-stream", data: await base64(file) };
      else throw new Error("choose an image first");
      setResult(
        must(
          await gateway.POST("/v1/chains/{chain}:moderate", {
            params: { path: { chain: name } },
            body: { content, metadata: { source: "sekisho-ui" } },
          }),
        ),
      );
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };

  const boxes = result ? collectBoxes(result.stages) : [];
  return (
    <section>
      <div class="titlebar">
        <h1>Try {name}</h1>
        <span class="links">
          <a href={chainPath(name)} onClick={onLink}>
            Edit
          </a>
        </span>
      </div>
      <div class="tabs" role="tablist" aria-label="What to send">
        {(["text", "image"] as const).map((m) => (
          <button type="button" role="tab" aria-selected={mode === m} key={m} onClick={() => setMode(m)}>
            {m === "text" ? "Text" : "Image"}
          </button>
        ))}
      </div>
      <form
        class="try"
        onSubmit={(e) => {
          e.preventDefault();
          void run();
        }}
      >
        {mode === "text" ? (
          <label>
            Text
            <textarea rows={4} value={text} onInput={(e) => setText(e.currentTarget.value)} />
          </label>
        ) : (
          <div
            class={`drop${over ? " over" : ""}`}
            onDragOver={(e) => {
              e.preventDefault();
              setOver(true);
            }}
            onDragLeave={() => setOver(false)}
            onDrop={(e) => {
              e.preventDefault();
              setOver(false);
              pick(e.dataTransfer?.files[0]);
            }}
          >
            <p>
              Drop an image here, or{" "}
              <button type="button" class="link" onClick={() => input.current?.click()}>
                choose a file
              </button>
              .
            </p>
            <input
              ref={input}
              type="file"
              accept="image/jpeg,image/png,image/webp,image/gif"
              aria-label="Image file"
              class="visually-hidden"
              onChange={(e) => pick(e.currentTarget.files?.[0])}
            />
            {preview && (
              <figure class="preview">
                <img
                  src={preview}
                  alt={file?.name ?? "the image sent"}
                  onLoad={(e) => setNatural([e.currentTarget.naturalWidth, e.currentTarget.naturalHeight])}
                />
                {natural[0] > 0 && boxes.length > 0 && (
                  <svg
                    class="boxes"
                    viewBox={`0 0 ${natural[0]} ${natural[1]}`}
                    preserveAspectRatio="none"
                    role="img"
                    aria-label={`${boxes.length} region(s) found`}
                  >
                    {boxes.map((b, i) => (
                      <g key={i} class="box">
                        <rect x={b.x} y={b.y} width={b.width} height={b.height} />
                        <text x={b.x} y={Math.max(b.y - 4, natural[1] / 30)} font-size={Math.max(10, natural[0] / 40)}>
                          {b.label} {b.score.toFixed(2)}
                        </text>
                        {b.landmarks.map((p, j) => (
                          <circle key={j} cx={p.x} cy={p.y} r={Math.max(2, natural[0] / 200)} />
                        ))}
                      </g>
                    ))}
                  </svg>
                )}
              </figure>
            )}
          </div>
        )}
        <button type="submit" disabled={busy || (mode === "image" ? !file : !text)}>
          {busy ? "Running…" : `Run through ${name}`}
        </button>
      </form>
      {error && <p class="error" role="alert">{error}</p>}
      {result && <Result r={result} />}
    </section>
  );
}

function Result({ r }: { r: ModerateResponse }) {
  const decision = String(r.decision ?? "");
  return (
    <div class="result" aria-live="polite">
      <p class="decision">
        <span class={`badge big ${decision.toLowerCase()}`} data-testid="decision">
          {decision}
        </span>{" "}
        {r.reason && <span>reason <code>{r.reason}</code></span>}{" "}
        <span class="muted">
          chain v{r.chainVersion} · {(Number(r.latencyUs ?? 0) / 1000).toFixed(1)} ms
        </span>
      </p>
      <ol class="path" aria-label="Path through the stages">
        {(r.stages ?? []).map((s) => (
          <li key={s.id}>
            <h3>
              {s.id} <span class="muted">score {fmt(s.score)} by {s.aggregator}</span>
            </h3>
            {s.error && <p class="error">{s.error}</p>}
            <p class="branch">
              {s.when ? (
                <>
                  fired <code>{s.when}</code> → {s.next || "end"}
                </>
              ) : (
                <>no branch fired → {s.next || "next stage"}</>
              )}
            </p>
            <table class="list filters">
              <thead>
                <tr>
                  <th scope="col">Filter</th>
                  <th scope="col">Score</th>
                  <th scope="col">Labels</th>
                  <th scope="col">Outcome</th>
                  <th scope="col">Attempts</th>
                  <th scope="col">Latency</th>
                </tr>
              </thead>
              <tbody>
                {(s.filters ?? []).map((f: FilterTrace) => (
                  <tr key={f.alias}>
                    <th scope="row">
                      {f.alias}
                      {f.alias !== f.filter ? <span class="muted"> ({f.filter})</span> : null}
                      {f.shadow ? <span class="muted"> shadow</span> : null}
                    </th>
                    <td>{fmt(f.score)}</td>
                    <td class="labels">
                      {Object.entries(f.labels ?? {}).map(([k, v]) => (
                        <span key={k}>
                          {k}={fmt(v)}
                        </span>
                      ))}
                    </td>
                    <td>
                      {String(f.outcome ?? "")}
                      {f.error ? <span class="error"> {f.error}</span> : null}
                    </td>
                    <td>{f.attempts}</td>
                    <td>{(Number(f.latencyUs ?? 0) / 1000).toFixed(1)} ms</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </li>
        ))}
      </ol>
    </div>
  );
}

function fmt(v: unknown): string {
  const n = Number(v ?? 0);
  return Number.isInteger(n) ? String(n) : n.toFixed(3);
}

async function base64(f: File): Promise<string> {
  const bytes = new Uint8Array(await f.arrayBuffer());
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}
