import { useEffect, useState } from "preact/hooks";
import { type LiveView, live } from "../api/client";
import { type Series, frameOf, linePath } from "../lib/chart";

const W = 640;
const H = 180;
const COLOURS = ["#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];

export function LivePage() {
  const [view, setView] = useState<LiveView | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let stop = false;
    const tick = async () => {
      try {
        const v = await live();
        if (!stop) {
          setView(v);
          setError("");
        }
      } catch (e) {
        if (!stop) setError((e as Error).message);
      }
    };
    void tick();
    const t = setInterval(tick, 2000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, []);

  if (!view) return error ? <p class="error">{error}</p> : <p>Loading…</p>;
  const samples = view.samples;
  const t0 = samples.length ? samples[samples.length - 1].at_ms : 0;
  const x = (at: number) => (at - t0) / 1000;
  // Every chart spans the whole window, so that a filter seen only lately sits on the right.
  const since = samples.length ? x(samples[0].at_ms) : -1;

  const decisionSeries: Series[] = [];
  const keys = new Set<string>();
  for (const s of samples)
    for (const [chain, byD] of Object.entries(s.decisions)) for (const d of Object.keys(byD)) keys.add(`${chain} ${d}`);
  for (const k of [...keys].sort()) {
    const [chain, d] = k.split(" ");
    decisionSeries.push({
      name: k,
      points: samples.map((s) => [x(s.at_ms), (s.decisions[chain]?.[d] ?? 0) / s.seconds]),
    });
  }
  const filterNames = [...new Set(samples.flatMap((s) => Object.keys(s.filters)))].sort();
  const latency = (q: "p50_ms" | "p99_ms"): Series[] =>
    filterNames.map((f) => ({
      name: f,
      points: samples.filter((s) => s.filters[f]).map((s) => [x(s.at_ms), s.filters[f][q]]),
    }));

  return (
    <section>
      <h1>Live</h1>
      <p class="muted">
        From the gateway's metrics, read every {view.interval_ms / 1000} s; the last{" "}
        {Math.round((samples.length * view.interval_ms) / 60000) || 1} min.
      </p>
      {view.trouble && <p class="error" role="alert">{view.trouble}</p>}
      {error && <p class="error" role="alert">{error}</p>}
      <Chart title="Decisions per second, by chain and decision" series={decisionSeries} unit="/s" since={since} />
      <Chart title="Filter latency p50 (ms)" series={latency("p50_ms")} unit="ms" since={since} />
      <Chart title="Filter latency p99 (ms)" series={latency("p99_ms")} unit="ms" since={since} />
    </section>
  );
}

function Chart({ title, series, unit, since }: { title: string; series: Series[]; unit: string; since: number }) {
  const f = { ...frameOf(series), x0: Math.min(since, -1), x1: 0 };
  const has = series.some((s) => s.points.length > 0);
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      {has ? (
        <>
          <svg class="plot" viewBox={`0 0 ${W} ${H}`} role="img" aria-label={title}>
            <line class="axis" x1={0} y1={H} x2={W} y2={H} />
            <text class="tick" x={2} y={12}>
              {f.yMax} {unit}
            </text>
            <text class="tick" x={W - 2} y={H - 4} text-anchor="end">
              now
            </text>
            {series.map((s, i) => (
              <path key={s.name} d={linePath(s.points, f, W, H)} stroke={COLOURS[i % COLOURS.length]} class="line" />
            ))}
            {/* The latest point of each series, so that one sample shows too. */}
            {series.map((s, i) => {
              const last = s.points[s.points.length - 1];
              if (!last) return null;
              const [cx, cy] = linePath([last], f, W, H).slice(1).split(",").map(Number);
              return <circle key={`${s.name}-last`} cx={cx} cy={cy} r={3} fill={COLOURS[i % COLOURS.length]} />;
            })}
          </svg>
          <ul class="legend">
            {series.map((s, i) => {
              const last = s.points[s.points.length - 1]?.[1] ?? 0;
              return (
                <li key={s.name}>
                  <svg class="swatch" width="12" height="12" aria-hidden="true">
                    <rect width="12" height="12" fill={COLOURS[i % COLOURS.length]} />
                  </svg>{" "}
                  {s.name}: {last.toFixed(last < 10 ? 2 : 0)} {unit}
                </li>
              );
            })}
          </ul>
        </>
      ) : (
        <p class="muted">Nothing yet: send some items through a chain.</p>
      )}
    </figure>
  );
}
