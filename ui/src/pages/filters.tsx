import { useEffect, useState } from "preact/hooks";
import { type DiscoveredFilter, gateway, must } from "../api/client";

export function Filters() {
  const [filters, setFilters] = useState<DiscoveredFilter[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    gateway
      .GET("/v1/filters")
      .then((r) => setFilters(must(r).filters ?? []))
      .catch((e: Error) => setError(e.message));
  }, []);
  return (
    <section>
      <h1>Filters</h1>
      <p class="muted">What the gateway's discovery found, and the state of each endpoint.</p>
      {error && <p class="error" role="alert">{error}</p>}
      {filters === null && !error && <p>Loading…</p>}
      {filters?.map((f) => {
        // Filters with a model say where it runs; replicas may differ (a GPU one fallen back to the CPU).
        const runsOn = (f.endpoints ?? []).some((e) => e.info?.[PROVIDER]);
        return (
          <article class="filter" key={f.name}>
            <h2>
              {f.name} <span class="muted">{f.descriptor?.version}</span>
            </h2>
            <p>
              accepts {(f.descriptor?.contentTypes ?? []).join(", ") || "?"}
              {f.descriptor?.labels?.length ? <> · labels {f.descriptor.labels.join(", ")}</> : null}
            </p>
            {f.descriptor?.configSchema && (
              <details>
                <summary>Config schema</summary>
                <pre>{pretty(f.descriptor.configSchema)}</pre>
              </details>
            )}
            <table class="list">
              <thead>
                <tr>
                  <th scope="col">Endpoint</th>
                  <th scope="col">State</th>
                  <th scope="col">Source</th>
                  {runsOn && <th scope="col">Runs on</th>}
                  <th scope="col">Calls</th>
                  <th scope="col">Failures</th>
                </tr>
              </thead>
              <tbody>
                {(f.endpoints ?? []).map((e) => (
                  <tr key={e.address}>
                    <td>
                      <code>{e.address}</code>
                    </td>
                    <td class={`state ${e.state}`}>
                      {e.state}
                      {Number(e.ejectedForMs ?? 0) > 0 ? <span class="muted"> for {e.ejectedForMs} ms</span> : null}
                      {Number(e.restingForMs ?? 0) > 0 ? (
                        <span class="muted" title="it shed a call and asked for time (a retry pushback): sent nothing while a sibling can take its calls">
                          {" "}
                          · resting {e.restingForMs} ms
                        </span>
                      ) : null}
                      {e.lastError ? <span class="muted"> {e.lastError}</span> : null}
                    </td>
                    <td>{e.source}</td>
                    {runsOn && <td title={describeInfo(e.info)}>{e.info?.[PROVIDER] ?? "—"}</td>}
                    <td>{e.calls ?? 0}</td>
                    <td>{e.failures ?? 0}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </article>
        );
      })}
    </section>
  );
}

/** The `info` key under which a filter with a model names its execution provider. */
const PROVIDER = "execution_provider";

/** Every fact an endpoint gave in `Describe`, one `key: value` a line. */
function describeInfo(info: Record<string, string> | undefined): string {
  return Object.entries(info ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}: ${v}`)
    .join("\n");
}

function pretty(s: string): string {
  try {
    return JSON.stringify(JSON.parse(s), null, 2);
  } catch {
    return s;
  }
}
