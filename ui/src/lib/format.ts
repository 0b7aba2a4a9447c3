/** "3 min ago" style, from seconds since the Unix epoch (a proto3 JSON int64 string). */
export function ago(epochSeconds: string | number | undefined, now = Date.now()): string {
  const t = Number(epochSeconds ?? 0) * 1000;
  if (!t) return "";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toISOString().slice(0, 10);
}

export function when(epochSeconds: string | number | undefined): string {
  const t = Number(epochSeconds ?? 0) * 1000;
  return t ? new Date(t).toLocaleString() : "";
}

/** Decisions per chain summed over the live view's samples. */
export function decisionTotals(
  samples: { decisions: Record<string, Record<string, number>> }[],
): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  for (const s of samples)
    for (const [chain, byDecision] of Object.entries(s.decisions))
      for (const [d, n] of Object.entries(byDecision)) {
        out[chain] ??= {};
        out[chain][d] = (out[chain][d] ?? 0) + n;
      }
  return out;
}
