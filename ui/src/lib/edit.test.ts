import { describe, expect, it } from "vitest";
import {
  addStage,
  aggregateForm,
  aggregateFrom,
  branchForm,
  branchFrom,
  celVariables,
  chainData,
  chainSettings,
  filterOptions,
  moveBranch,
  moveStage,
  policyFrom,
  removeBranch,
  removeFilter,
  removeStage,
  renameStage,
  setAggregate,
  setBranch,
  setChainSettings,
  setFilterOptions,
} from "./edit";

const CHAIN = `# the profile photo review
name: photo
content_types: [image/jpeg, image/png]
stages:
  - id: faces
    filters:
      - use: face-detect
        as: faces
        config: {min_face: 0.1}  # kept as written
    aggregate: max
    branches:
      - when: "filters.faces.labels['no_face'] > 0.5"
        decide: {decision: REJECT, reason: no_face}
      - when: "score < 0.2"
        goto: nsfw
  - id: nsfw
    filters:
      - {use: ng-image}
default_decision: REVIEW
`;

const noPolicy = { timeout: "", retries: "", backoff: "", onError: "", onErrorScore: "" };

describe("chain settings", () => {
  it("reads the settings and writes them back, keeping comments and layout", () => {
    const s = chainSettings(chainData(CHAIN));
    expect(s).toEqual({
      description: "",
      contentTypes: "image/jpeg, image/png",
      defaultDecision: "REVIEW",
      auditSampleRate: "",
      defaults: noPolicy,
    });
    const { document, problems } = setChainSettings(CHAIN, {
      ...s,
      description: "Profile photos",
      contentTypes: "image/*",
      auditSampleRate: "0.05",
      defaults: { ...noPolicy, timeout: "500ms", onError: "score", onErrorScore: "1" },
    });
    expect(problems).toEqual({});
    expect(document).toContain("# the profile photo review");
    expect(document).toContain("config: {min_face: 0.1} # kept as written");
    expect(document).toContain("content_types: [image/*]");
    expect(document).toContain("description: Profile photos");
    expect(document).toContain("audit_sample_rate: 0.05");
    expect(chainData(document)?.defaults).toEqual({ timeout: "500ms", on_error: { score: 1 } });
    // Emptied fields go away.
    const back = setChainSettings(document, { ...chainSettings(chainData(document)), description: "", auditSampleRate: "", defaults: noPolicy });
    expect(chainData(back.document)).not.toHaveProperty("description");
    expect(chainData(back.document)).not.toHaveProperty("defaults");
    expect(chainData(back.document)).not.toHaveProperty("audit_sample_rate");
  });

  it("refuses what cannot be right, naming the field, and leaves the YAML alone", () => {
    const s = chainSettings(chainData(CHAIN));
    const r = setChainSettings(CHAIN, {
      ...s,
      contentTypes: " , ",
      auditSampleRate: "2",
      defaults: { ...noPolicy, timeout: "soon", retries: "-1", onError: "score", onErrorScore: "1.5" },
    });
    expect(Object.keys(r.problems).sort()).toEqual([
      "audit_sample_rate",
      "content_types",
      "defaults.on_error",
      "defaults.retries",
      "defaults.timeout",
    ]);
    expect(r.document).toBe(CHAIN);
  });

  it("reads durations the way the chainstore writes them", () => {
    expect(policyFrom({ ...noPolicy, timeout: "1m 30s", backoff: "20ms", retries: "2", onError: "skip" })).toEqual({
      fields: { timeout: "1m 30s", backoff: "20ms", retries: 2, on_error: "skip" },
      problems: {},
    });
  });
});

describe("stages", () => {
  it("adds a stage where asked and refuses a duplicate or bad id", () => {
    const doc = addStage(CHAIN, "text", 1);
    const ids = (chainData(doc)?.stages as { id: string }[]).map((s) => s.id);
    expect(ids).toEqual(["faces", "text", "nsfw"]);
    expect(chainData(doc)?.stages).toContainEqual({ id: "text", filters: [], aggregate: "max" });
    expect(() => addStage(CHAIN, "nsfw", 0)).toThrow("already a stage nsfw");
    expect(() => addStage(CHAIN, "Bad Id", 0)).toThrow("lowercase");
    expect(() => addStage("a: [", "x", 0)).toThrow("does not parse");
  });

  it("renames a stage and the rules that go to it", () => {
    const doc = renameStage(CHAIN, 1, "nudity");
    expect(doc).toContain("goto: nudity");
    expect(doc).toContain("id: nudity");
    expect(doc).not.toContain("nsfw");
    expect(() => renameStage(CHAIN, 1, "faces")).toThrow("already a stage faces");
  });

  it("moves and removes stages", () => {
    const moved = moveStage(CHAIN, 1, -1);
    expect((chainData(moved)?.stages as { id: string }[]).map((s) => s.id)).toEqual(["nsfw", "faces"]);
    expect(moveStage(CHAIN, 0, -1)).toBe(CHAIN);
    const removed = removeStage(CHAIN, 0);
    expect((chainData(removed)?.stages as { id: string }[]).map((s) => s.id)).toEqual(["nsfw"]);
    expect(() => removeStage(CHAIN, 5)).toThrow("no stage 6");
  });
});

describe("aggregators", () => {
  it("round-trips every kind through the form", () => {
    for (const v of [
      "max",
      { builtin: "weighted_mean", weights: { faces: 2, other: 0.5 } },
      { builtin: "vote", k: 2, threshold: 0.7 },
      { custom: "strictest" },
      { remote: "ensemble", config: { model: "v2" } },
    ]) {
      const r = aggregateFrom(aggregateForm(v));
      expect(r.problems).toEqual({});
      expect(r.value).toEqual(v);
    }
  });

  it("names what is missing or wrong", () => {
    const blank = aggregateForm("max");
    expect(aggregateFrom({ ...blank, name: "vote", k: "0" }).problems).toHaveProperty("k");
    expect(aggregateFrom({ ...blank, name: "weighted_mean", weights: "faces 2" }).problems.weights).toContain("faces 2");
    expect(aggregateFrom({ ...blank, kind: "remote", name: "x", config: "{nope" }).problems.config).toContain("not JSON");
    expect(aggregateFrom({ ...blank, kind: "custom", name: " " }).problems).toHaveProperty("name");
  });

  it("writes a map aggregator in flow style", () => {
    const doc = setAggregate(CHAIN, 0, { builtin: "vote", k: 1 });
    expect(doc).toContain("aggregate: {builtin: vote, k: 1}");
    expect(setAggregate(doc, 0, "min")).toContain("aggregate: min");
  });
});

describe("branch rules", () => {
  it("reads a rule into the form and writes it back", () => {
    const data = chainData(CHAIN);
    const rules = (data?.stages as { branches: unknown[] }[])[0].branches;
    expect(branchForm(rules[0])).toEqual({
      when: "filters.faces.labels['no_face'] > 0.5",
      then: "decide",
      goto: "",
      decision: "REJECT",
      reason: "no_face",
    });
    expect(branchForm(rules[1]).then).toBe("goto");
    const r = branchFrom({ ...branchForm(rules[0]), reason: "no_face_found" });
    const doc = setBranch(CHAIN, 0, 0, r.value);
    expect(doc).toContain("decide: {decision: REJECT, reason: no_face_found}");
    expect(doc).toContain("goto: nsfw");
  });

  it("adds a rule to a stage without any, and removes the list with its last rule", () => {
    const r = branchFrom({ when: "score >= 0.8", then: "decide", goto: "", decision: "REJECT", reason: "nsfw" });
    expect(r.problems).toEqual({});
    const doc = setBranch(CHAIN, 1, 0, r.value);
    expect((chainData(doc)?.stages as { branches?: unknown[] }[])[1].branches).toEqual([
      { when: "score >= 0.8", decide: { decision: "REJECT", reason: "nsfw" } },
    ]);
    expect(doc).toContain("decide: {decision: REJECT, reason: nsfw}");
    expect(chainData(removeBranch(doc, 1, 0))?.stages).toContainEqual({ id: "nsfw", filters: [{ use: "ng-image" }] });
  });

  it("moves rules and names missing parts", () => {
    const moved = moveBranch(CHAIN, 0, 1, -1);
    const rules = (chainData(moved)?.stages as { branches: { when: string }[] }[])[0].branches;
    expect(rules.map((b) => b.when)).toEqual(["score < 0.2", "filters.faces.labels['no_face'] > 0.5"]);
    expect(Object.keys(branchFrom({ when: " ", then: "decide", goto: "", decision: "REVIEW", reason: "" }).problems).sort()).toEqual([
      "reason",
      "when",
    ]);
    expect(branchFrom({ when: "true", then: "goto", goto: "", decision: "", reason: "" }).problems).toHaveProperty("goto");
  });

  it("offers what a rule can read, quoting names CEL cannot write bare", () => {
    const vars = celVariables(chainData(CHAIN), 1, (f) => (f === "face-detect" ? ["no_face", "face_count"] : []));
    expect(vars).toEqual([
      "score",
      "filters.faces.score",
      'filters.faces.labels["no_face"]',
      'filters.faces.labels["face_count"]',
      'filters["ng-image"].score',
      "stages.faces.score",
      'metadata["key"]',
    ]);
  });
});

describe("filters", () => {
  it("sets alias, shadow and policy, keeping use and config", () => {
    const o = filterOptions((chainData(CHAIN)?.stages as { filters: unknown[] }[])[1].filters[0]);
    expect(o).toEqual({ alias: "", shadow: false, policy: noPolicy });
    const r = setFilterOptions(CHAIN, 1, 0, { alias: "nsfw_v2", shadow: true, policy: { ...noPolicy, timeout: "2s", onError: "skip" } });
    expect(r.problems).toEqual({});
    expect(r.document).toContain("- {use: ng-image, as: nsfw_v2, shadow: true, timeout: 2s, on_error: skip}");
    const back = setFilterOptions(r.document, 1, 0, { alias: "ng-image", shadow: false, policy: noPolicy });
    expect(back.document).toContain("- {use: ng-image}");
    const first = setFilterOptions(CHAIN, 0, 0, { alias: "faces", shadow: false, policy: { ...noPolicy, retries: "3" } });
    expect(first.document).toContain("config: {min_face: 0.1} # kept as written");
    expect(chainData(first.document)?.stages).toContainEqual(
      expect.objectContaining({ filters: [{ use: "face-detect", as: "faces", config: { min_face: 0.1 }, retries: 3 }] }),
    );
    expect(setFilterOptions(CHAIN, 0, 0, { alias: "two words", shadow: false, policy: noPolicy }).problems).toHaveProperty("as");
  });

  it("removes a filter", () => {
    expect(chainData(removeFilter(CHAIN, 1, 0))?.stages).toContainEqual({ id: "nsfw", filters: [] });
    expect(() => removeFilter(CHAIN, 1, 3)).toThrow("no filter 4 in stage 2");
  });
});
