import { useEffect, useState } from "preact/hooks";
import { type Chain, type Principal, chainstore, live, must } from "../api/client";
import { ago, decisionTotals, when } from "../lib/format";
import { chainPath, onLink } from "../lib/router";

export function ChainList({ who }: { who: Principal }) {
  const [chains, setChains] = useState<Chain[] | null>(null);
  const [error, setError] = useState("");
  const [counts, setCounts] = useState<Record<string, Record<string, number>>>({});
  const [windowS, setWindowS] = useState(0);
  useEffect(() => {
    chainstore
      .GET("/v1/chains")
      .then((r) => setChains(must(r).chains ?? []))
      .catch((e: Error) => setError(e.message));
    live()
      .then((v) => {
        setCounts(decisionTotals(v.samples));
        setWindowS(Math.round(v.samples.reduce((a, s) => a + s.seconds, 0)));
      })
      .catch(() => {});
  }, []);
  return (
    <section>
      <div class="titlebar">
        <h1>Chains</h1>
        {who.role === "operator" && (
          <a class="button" href="/chains/new" onClick={onLink}>
            New chain
          </a>
        )}
      </div>
      {error && <p class="error" role="alert">{error}</p>}
      {chains === null && !error && <p>Loading…</p>}
      {chains && chains.length === 0 && <p>No chains yet.</p>}
      {chains && chains.length > 0 && (
        <table class="list">
          <caption class="visually-hidden">Chains</caption>
          <thead>
            <tr>
              <th scope="col">Chain</th>
              <th scope="col">Version</th>
              <th scope="col">Last change</th>
              <th scope="col">
                Decisions{windowS ? ` (last ${Math.max(1, Math.round(windowS / 60))} min)` : ""}
              </th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {chains.map((c) => {
              const n = counts[c.name ?? ""] ?? {};
              return (
                <tr key={c.name}>
                  <th scope="row">
                    <a href={chainPath(c.name ?? "")} onClick={onLink}>
                      {c.name}
                    </a>
                  </th>
                  <td>v{c.version}</td>
                  <td title={when(c.updatedAt)}>
                    {ago(c.updatedAt)}
                    {c.author ? ` by ${c.author}` : ""}
                    {c.comment ? ` — ${c.comment}` : ""}
                  </td>
                  <td class="counts" data-chain={c.name}>
                    {["APPROVE", "REJECT", "REVIEW"].map((d) => (
                      <span class={`badge ${d.toLowerCase()}`} key={d} title={d}>
                        {d.toLowerCase()} {Math.round(n[d] ?? 0)}
                      </span>
                    ))}
                  </td>
                  <td class="actions">
                    <a href={chainPath(c.name ?? "", "try")} onClick={onLink}>
                      Try
                    </a>
                    <a href={chainPath(c.name ?? "", "history")} onClick={onLink}>
                      History
                    </a>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}
