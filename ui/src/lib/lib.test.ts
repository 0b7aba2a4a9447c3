import { describe, expect, it } from "vitest";
import { collectBoxes } from "./boxes";
import { frameOf, linePath, niceCeil } from "./chart";
import { lineDiff, withContext } from "./diff";
import { ago, decisionTotals } from "./format";
import { locate, outline, pathSegments } from "./outline";
import { chainPath, parseRoute } from "./router";

describe("lineDiff", () => {
  it("numbers added lines in the new text and removed ones in the old", () => {
    const rows = lineDiff("a\nb\nc\n", "a\nB\nc\nd");
    expect(rows).toEqual([
      { kind: "same", line: 1, text: "a" },
      { kind: "del", line: 2, text: "b" },
      { kind: "add", line: 2, text: "B" },
      { kind: "same", line: 3, text: "c" },
      { kind: "add", line: 4, text: "d" },
    ]);
  });
  it("cuts unchanged runs beyond the context", () => {
    const before = Array.from({ length: 20 }, (_, i) => `l${i}`).join("\n");
    const after = before.replace("l10", "L10");
    const shown = withContext(lineDiff(before, after), 2);
    expect(shown[0]).toEqual({ kind: "gap", count: 8 });
    expect(shown.filter((r) => r.kind !== "gap").map((r) => (r as { text: string }).text)).toEqual([
      "l8", "l9", "l10", "L10", "l11", "l12",
    ]);
    expect(shown[shown.length - 1]).toEqual({ kind: "gap", count: 7 });
  });
});

describe("outline", () => {
  const doc = `name: c
stages:
  - id: one
    filters:
      - use: keywords
        as: kw
      - use: nope
    aggregate: {builtin: max}
    branches:
      - when: "score >"
        decide: {decision: REJECT, reason: spam}
  - id: two
    filters: [{use: noop, shadow: true}]
    branches: [{when: "true", goto: one}]
`;
  it("places each problem at the stage, filter or branch its path names", () => {
    const o = outline(doc, [
      { path: "stages[0].filters[1].use", message: "unknown filter `nope`", line: 7 },
      { path: "stages[0].branches[0].when", message: "does not parse", line: 10 },
      { path: "stages[1]", message: "loops", line: 12 },
      { path: "default_decision", message: "missing" },
      { path: "stages[9].id", message: "beyond the outline" },
    ]);
    expect(o.name).toBe("c");
    expect(o.stages.map((s) => s.id)).toEqual(["one", "two"]);
    expect(o.stages[0].aggregate).toBe("max");
    expect(o.stages[0].filters.map((f) => f.label)).toEqual(["keywords as kw", "nope"]);
    expect(o.stages[1].filters[0].label).toBe("noop (shadow: reported, not counted)");
    expect(o.stages[0].filters[1].problems.map((p) => p.message)).toEqual(["unknown filter `nope`"]);
    expect(o.stages[0].filters[0].problems).toEqual([]);
    expect(o.stages[0].branches[0].label).toBe("when score > → decide REJECT (spam)");
    expect(o.stages[0].branches[0].problems).toHaveLength(1);
    expect(o.stages[1].problems.map((p) => p.message)).toEqual(["loops"]);
    expect(o.stages[1].branches[0].label).toBe("when true → goto one");
    expect(o.problems.map((p) => p.path)).toEqual(["default_decision", "stages[9].id"]);
  });
  it("reports YAML that does not parse", () => {
    const o = outline("name: [unclosed", []);
    expect(o.syntax).toBeTruthy();
    expect(o.stages).toEqual([]);
  });
});

describe("boxes", () => {
  it("collects regions of every filter with its alias as the label", () => {
    const boxes = collectBoxes([
      { filters: [{ alias: "face", regions: [{ x: 1, y: 2, width: 3, height: 4, score: 0.9, landmarks: [{ x: 2, y: 3 }] }] }] },
      { filters: [{ alias: "qr", regions: [{ x: 5, width: 6, height: 7, label: "qr" }] }, { alias: "ng" }] },
    ]);
    expect(boxes).toHaveLength(2);
    expect(boxes[0]).toMatchObject({ x: 1, y: 2, label: "face", landmarks: [{ x: 2, y: 3 }] });
    expect(boxes[1]).toMatchObject({ x: 5, y: 0, label: "qr: qr", score: 0 });
  });
});

describe("chart", () => {
  it("frames the points and draws y upwards", () => {
    const f = frameOf([{ name: "a", points: [[0, 0], [10, 4.4]] }]);
    expect(f).toEqual({ x0: 0, x1: 10, yMax: 5 });
    expect(linePath([[0, 0], [10, 5]], f, 100, 50)).toBe("M0.0,50.0 L100.0,0.0");
    expect(frameOf([])).toEqual({ x0: 0, x1: 1, yMax: 1 });
  });
  it("rounds up to 1, 2 or 5 times a power of ten", () => {
    expect([0.03, 1, 1.2, 3, 7, 11].map(niceCeil)).toEqual([0.05, 1, 2, 5, 10, 20]);
  });
});

describe("router", () => {
  it("maps paths to pages and back", () => {
    expect(parseRoute("/")).toEqual({ page: "chains" });
    expect(parseRoute("/chains/new")).toEqual({ page: "new" });
    expect(parseRoute("/chains/a%20b/history")).toEqual({ page: "history", name: "a b" });
    expect(parseRoute("/chains/x/try")).toEqual({ page: "try", name: "x" });
    expect(parseRoute("/elsewhere/x")).toEqual({ page: "missing", path: "/elsewhere/x" });
    expect(chainPath("a b", "history")).toBe("/chains/a%20b/history");
  });
});

describe("format", () => {
  it("says how long ago and sums decisions over samples", () => {
    expect(ago("100", 130_000)).toBe("30 s ago");
    expect(ago(0)).toBe("");
    expect(
      decisionTotals([
        { decisions: { c: { APPROVE: 2 } } },
        { decisions: { c: { APPROVE: 1, REJECT: 1 }, d: { REVIEW: 3 } } },
      ]),
    ).toEqual({ c: { APPROVE: 3, REJECT: 1 }, d: { REVIEW: 3 } });
  });
});

describe("locate", () => {
  const doc = `name: c
stages:
  - id: one
    filters:
      - use: keywords
      - use: nope
`;
  it("finds the line a problem's path names", () => {
    const got = locate(doc, [
      { path: "stages[0].filters[1].use", message: "unknown" },
      { path: "stages[0].filters[1].config.x", message: "beyond: its deepest ancestor" },
      { path: "stages[0].id", message: "given", line: 2 },
      { path: "", message: "no path" },
    ]);
    expect(got.map((p) => p.line)).toEqual([6, 6, 2, undefined]);
    expect(pathSegments("stages[10].branches[0].when")).toEqual(["stages", 10, "branches", 0, "when"]);
  });
});
