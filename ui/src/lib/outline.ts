// The chain's structure read from its YAML, with each validation problem placed at the
// stage, filter or branch its path names (`stages[1].branches[0].when`).
import { LineCounter, isNode, isSeq, parseDocument } from "yaml";

export interface Located {
  path: string;
  message: string;
  line?: number;
}

export interface FilterNode {
  label: string;
  problems: Located[];
}
export interface BranchNode {
  label: string;
  problems: Located[];
}
export interface StageNode {
  id: string;
  aggregate: string;
  filters: FilterNode[];
  branches: BranchNode[];
  problems: Located[];
}
export interface Outline {
  name: string;
  stages: StageNode[];
  /** Problems about the chain as a whole (or a path the outline does not show). */
  problems: Located[];
  /** Set when the YAML itself does not parse. */
  syntax?: string;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

export function outline(document: string, problems: Located[]): Outline {
  const doc = parseDocument(document);
  if (doc.errors.length) {
    return { name: "", stages: [], problems, syntax: doc.errors[0].message };
  }
  const root = doc.toJS() as unknown;
  const chain = isObj(root) ? root : {};
  const stages: StageNode[] = (Array.isArray(chain.stages) ? chain.stages : []).map((s: unknown, i: number) => {
    const st = isObj(s) ? s : {};
    const filters = (Array.isArray(st.filters) ? st.filters : []).map((f: unknown) => {
      const fo = isObj(f) ? f : {};
      const use = String(fo.use ?? "?");
      const label = fo.as ? `${use} as ${String(fo.as)}` : use;
      return { label: fo.shadow === true ? `${label} (shadow: reported, not counted)` : label, problems: [] as Located[] };
    });
    const branches = (Array.isArray(st.branches) ? st.branches : []).map((b: unknown) => {
      const bo = isObj(b) ? b : {};
      const then = isObj(bo.decide)
        ? `decide ${String((bo.decide as Obj).decision ?? "?")}${(bo.decide as Obj).reason ? ` (${String((bo.decide as Obj).reason)})` : ""}`
        : bo.goto
          ? `goto ${String(bo.goto)}`
          : "?";
      return { label: `when ${String(bo.when ?? "?")} → ${then}`, problems: [] as Located[] };
    });
    const agg = st.aggregate;
    return {
      id: String(st.id ?? `#${i}`),
      aggregate: typeof agg === "string" ? agg : isObj(agg) ? String(agg.builtin ?? agg.remote ?? JSON.stringify(agg)) : "",
      filters,
      branches,
      problems: [] as Located[],
    };
  });
  const rest: Located[] = [];
  for (const p of problems) {
    const m = /^stages\[(\d+)\](?:\.(filters|branches)\[(\d+)\])?/.exec(p.path);
    const stage = m ? stages[Number(m[1])] : undefined;
    if (!stage) {
      rest.push(p);
      continue;
    }
    const list = m?.[2] === "filters" ? stage.filters : m?.[2] === "branches" ? stage.branches : undefined;
    const node = list?.[Number(m?.[3])];
    (node ?? stage).problems.push(p);
  }
  return { name: String(chain.name ?? ""), stages, problems: rest };
}

/** `stages[1].branches[0].when` → ["stages", 1, "branches", 0, "when"]. */
export function pathSegments(path: string): (string | number)[] {
  const out: (string | number)[] = [];
  for (const m of path.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[2] !== undefined ? Number(m[2]) : m[1]);
  return out;
}

/**
 * Problems with the line of the node their path names filled in where the server gave
 * none (checks against the chain's structure and against discovery name a path, not a
 * position). A path that goes beyond the document takes its deepest existing ancestor.
 */
export function locate(document: string, problems: Located[]): Located[] {
  const lc = new LineCounter();
  const doc = parseDocument(document, { lineCounter: lc });
  if (doc.errors.length) return problems;
  return problems.map((p) => {
    if (p.line || !p.path) return p;
    const segs = pathSegments(p.path);
    for (let n = segs.length; n > 0; n--) {
      const node = doc.getIn(segs.slice(0, n), true);
      if (isNode(node) && node.range) {
        return { ...p, line: lc.linePos(node.range[0]).line };
      }
    }
    return p;
  });
}

/**
 * The document with a filter added at the end of stage `stage`'s filters (comments and
 * layout elsewhere kept). Throws when the YAML does not parse or has no such stage.
 */
export function addFilter(document: string, stage: number, use: string, alias: string, config: Record<string, unknown>): string {
  const doc = parseDocument(document);
  if (doc.errors.length) throw new Error(`the YAML does not parse: ${doc.errors[0].message}`);
  if (!isNode(doc.getIn(["stages", stage], true))) throw new Error(`there is no stage ${stage + 1}`);
  const entry: Record<string, unknown> = { use };
  if (alias && alias !== use) entry.as = alias;
  if (Object.keys(config).length) entry.config = config;
  const node = doc.createNode(entry);
  node.flow = true;
  const filters = doc.getIn(["stages", stage, "filters"], true);
  if (isSeq(filters)) filters.add(node);
  else doc.setIn(["stages", stage, "filters"], doc.createNode([entry]));
  // `[a]` and `{a: 1}` stay as the operator wrote them (no padding inside the brackets).
  return doc.toString({ flowCollectionPadding: false, lineWidth: 0 });
}
