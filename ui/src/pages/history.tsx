import { useEffect, useState } from "preact/hooks";
import { type Chain, type Principal, chainstore, must } from "../api/client";
import { type DiffRow, lineDiff, withContext } from "../lib/diff";
import { when } from "../lib/format";
import { chainPath, onLink } from "../lib/router";

export function DiffTable({ rows, labels }: { rows: DiffRow[]; labels: [string, string] }) {
  const shown = withContext(rows);
  if (!rows.some((r) => r.kind !== "same")) return <p class="muted">No difference.</p>;
  return (
    <table class="diff" aria-label={`Changes from ${labels[0]} to ${labels[1]}`}>
      <tbody>
        {shown.map((r, i) =>
          r.kind === "gap" ? (
            <tr class="gap" key={i}>
              <td colSpan={3}>… {r.count} unchanged line(s)</td>
            </tr>
          ) : (
            <tr class={r.kind} key={i}>
              <td class="ln">{r.line}</td>
              <td class="sign">{r.kind === "add" ? "+" : r.kind === "del" ? "−" : ""}</td>
              <td>
                <code>{r.text}</code>
              </td>
            </tr>
          ),
        )}
      </tbody>
    </table>
  );
}

export function History({ who, name }: { who: Principal; name: string }) {
  const [versions, setVersions] = useState<Chain[] | null>(null);
  const [error, setError] = useState("");
  const [from, setFrom] = useState<string>("");
  const [to, setTo] = useState<string>("");
  const [confirm, setConfirm] = useState<string>("");
  const [message, setMessage] = useState("");

  const load = async () => {
    try {
      const v = must(await chainstore.GET("/v1/chains/{name}/versions", { params: { path: { name } } }));
      const list = [...(v.versions ?? [])].sort((a, b) => Number(b.version) - Number(a.version));
      setVersions(list);
      if (list.length) {
        setTo(list[0].version ?? "");
        setFrom((list[1] ?? list[0]).version ?? "");
      }
    } catch (e) {
      setError((e as Error).message);
    }
  };
  useEffect(() => {
    void load();
  }, [name]);

  const current = versions?.[0];
  const doc = (v: string) => versions?.find((x) => x.version === v)?.document ?? "";

  const rollback = async (to: string) => {
    setError("");
    try {
      const c = must(
        await chainstore.POST("/v1/chains/{name}:rollback", {
          params: { path: { name } },
          body: { toVersion: to, expectedVersion: current?.version ?? "0" },
        }),
      );
      setMessage(`Rolled back: version ${c.version} has the document of version ${to}.`);
      setConfirm("");
      await load();
    } catch (e) {
      setError((e as Error).message);
    }
  };

  return (
    <section>
      <div class="titlebar">
        <h1>History of {name}</h1>
        <span class="links">
          <a href={chainPath(name)} onClick={onLink}>
            Edit
          </a>
        </span>
      </div>
      {error && <p class="error" role="alert">{error}</p>}
      {message && <p class="ok" role="status">{message}</p>}
      {versions === null && !error && <p>Loading…</p>}
      {versions && (
        <>
          <table class="list versions">
            <thead>
              <tr>
                <th scope="col">Version</th>
                <th scope="col">When</th>
                <th scope="col">Who</th>
                <th scope="col">Comment</th>
                <th scope="col">From</th>
                <th scope="col">To</th>
                <th scope="col">
                  <span class="visually-hidden">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {versions.map((v) => (
                <tr key={v.version}>
                  <th scope="row">v{v.version}</th>
                  <td>{when(v.updatedAt)}</td>
                  <td>{v.author}</td>
                  <td>
                    {v.deleted ? "(deleted) " : ""}
                    {v.comment}
                  </td>
                  <td>
                    <input
                      type="radio"
                      name="from"
                      aria-label={`compare from v${v.version}`}
                      checked={from === v.version}
                      onChange={() => setFrom(v.version ?? "")}
                    />
                  </td>
                  <td>
                    <input
                      type="radio"
                      name="to"
                      aria-label={`compare to v${v.version}`}
                      checked={to === v.version}
                      onChange={() => setTo(v.version ?? "")}
                    />
                  </td>
                  <td>
                    {who.role === "operator" && v !== current && !v.deleted &&
                      (confirm === v.version ? (
                        <>
                          <button type="button" class="danger" onClick={() => void rollback(v.version ?? "")}>
                            Confirm roll back to v{v.version}
                          </button>{" "}
                          <button type="button" onClick={() => setConfirm("")}>
                            Cancel
                          </button>
                        </>
                      ) : (
                        <button type="button" onClick={() => setConfirm(v.version ?? "")}>
                          Roll back to v{v.version}
                        </button>
                      ))}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <h2>
            v{from} → v{to}
          </h2>
          <DiffTable rows={lineDiff(doc(from), doc(to))} labels={[`v${from}`, `v${to}`]} />
        </>
      )}
    </section>
  );
}
