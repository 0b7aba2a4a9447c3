import { describe, expect, it } from "vitest";
import { addFilter, outline } from "./outline";
import { configFrom, fieldsOf, show } from "./schemaform";

// What the keywords filter's Describe reports (schemars), and a nested-object case.
const KEYWORDS = `{"$schema":"https://json-schema.org/draft/2020-12/schema","title":"KeywordsConfig","type":"object","properties":{"case_sensitive":{"type":"boolean","default":false},"max_text_bytes":{"description":"Longest text accepted, in bytes.","type":"integer","format":"uint","default":1048576,"minimum":0},"score_per_hit":{"description":"What one hit adds to the score.","type":"number","format":"double","default":1.0},"words":{"description":"Words or phrases to flag.","type":"array","default":[],"items":{"type":"string"}}},"additionalProperties":false}`;
const FACE = JSON.stringify({
  type: "object",
  properties: {
    min_score: { type: "number", minimum: 0, maximum: 1, default: 0.5 },
    nms: { $ref: "#/$defs/Nms" },
    label: { type: ["string", "null"], default: null },
  },
  $defs: { Nms: { type: "object", properties: { method: { enum: ["linear", "gaussian"] } }, default: { method: "linear" } } },
});

describe("fieldsOf", () => {
  it("draws a field per property, typed from the schema", () => {
    const f = fieldsOf(KEYWORDS);
    expect(f.map((x) => [x.name, x.kind])).toEqual([
      ["case_sensitive", "boolean"],
      ["max_text_bytes", "integer"],
      ["score_per_hit", "number"],
      ["words", "strings"],
    ]);
    expect(f[1]).toMatchObject({ min: 0, default: 1048576, description: "Longest text accepted, in bytes." });
    const g = fieldsOf(FACE);
    expect(g.map((x) => [x.name, x.kind])).toEqual([
      ["label", "string"],
      ["min_score", "number"],
      ["nms", "json"],
    ]);
    expect(g[2].default).toEqual({ method: "linear" });
    expect(fieldsOf("not json")).toEqual([]);
  });
});

describe("configFrom", () => {
  it("keeps only values that differ from the defaults", () => {
    const f = fieldsOf(KEYWORDS);
    const texts = Object.fromEntries(f.map((x) => [x.name, show(x, x.default)]));
    expect(configFrom(f, texts)).toEqual({ config: {}, problems: {} });
    texts.words = "free money, click here";
    texts.score_per_hit = "0.4";
    expect(configFrom(f, texts)).toEqual({ config: { words: ["free money", "click here"], score_per_hit: 0.4 }, problems: {} });
  });
  it("names what is not a value of its kind or out of range", () => {
    const f = fieldsOf(FACE);
    expect(configFrom(f, { min_score: "2", nms: "{oops" }).problems).toEqual({ min_score: "at most 1", nms: "not JSON" });
    expect(configFrom(fieldsOf(KEYWORDS), { max_text_bytes: "1.5" }).problems).toEqual({ max_text_bytes: "not an integer" });
    expect(configFrom(f, { nms: '{"method":"gaussian"}' }).config).toEqual({ nms: { method: "gaussian" } });
  });
});

describe("addFilter", () => {
  const doc = `# my chain
name: c
stages:
  - id: one   # first
    filters:
      - use: keywords
    branches: []
  - id: two
    aggregate: max
`;
  it("appends to a stage's filters and keeps the comments", () => {
    const out = addFilter(doc, 0, "noop", "n", { score: 0.5 });
    expect(out).toContain("# my chain");
    expect(out).toContain("# first");
    expect(out).toContain("- {use: noop, as: n, config: {score: 0.5}}");
    expect(addFilter("name: c\nflow: [a, {b: 1}]\nstages: [{id: s, filters: []}]\n", 0, "x", "", {})).toContain("flow: [a, {b: 1}]");
    expect(outline(out, []).stages[0].filters.map((f) => f.label)).toEqual(["keywords", "noop as n"]);
  });
  it("makes the list when the stage has none", () => {
    const out = addFilter(doc, 1, "qr-code", "qr-code", {});
    expect(outline(out, []).stages[1].filters.map((f) => f.label)).toEqual(["qr-code"]);
    expect(() => addFilter(doc, 5, "x", "", {})).toThrow("no stage 6");
    expect(() => addFilter("a: [", 0, "x", "", {})).toThrow("does not parse");
  });
});
