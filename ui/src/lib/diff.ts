import { diffLines } from "diff";

export interface DiffRow {
  kind: "same" | "add" | "del";
  /** Line number in the old text (same, del) or the new one (add). */
  line: number;
  text: string;
}

/** A line diff of two documents, as rows for a table. */
export function lineDiff(before: string, after: string): DiffRow[] {
  const rows: DiffRow[] = [];
  let oldLine = 1;
  let newLine = 1;
  for (const part of diffLines(ensureNewline(before), ensureNewline(after))) {
    const lines = part.value.replace(/\n$/, "").split("\n");
    for (const text of lines) {
      if (part.added) rows.push({ kind: "add", line: newLine++, text });
      else if (part.removed) rows.push({ kind: "del", line: oldLine++, text });
      else {
        rows.push({ kind: "same", line: oldLine, text });
        oldLine++;
        newLine++;
      }
    }
  }
  return rows;
}

/** Rows within `context` lines of a change; runs of unchanged lines beyond are cut. */
export function withContext(rows: DiffRow[], context = 3): (DiffRow | { kind: "gap"; count: number })[] {
  const keep = rows.map(() => false);
  rows.forEach((r, i) => {
    if (r.kind !== "same") {
      for (let j = Math.max(0, i - context); j <= Math.min(rows.length - 1, i + context); j++) keep[j] = true;
    }
  });
  const out: (DiffRow | { kind: "gap"; count: number })[] = [];
  let gap = 0;
  rows.forEach((r, i) => {
    if (keep[i]) {
      if (gap) out.push({ kind: "gap", count: gap });
      gap = 0;
      out.push(r);
    } else gap++;
  });
  if (gap) out.push({ kind: "gap", count: gap });
  return out;
}

function ensureNewline(s: string): string {
  return s.endsWith("\n") ? s : `${s}\n`;
}
