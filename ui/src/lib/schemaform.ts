// A config form drawn from a filter's JSON Schema (what `Describe` reports): one field
// per top-level property, typed from the schema; what the form cannot draw (nested
// objects, maps) is a JSON field. Only values that differ from the filter's defaults go
// into the chain, so the chain says what it changes.

export type FieldKind = "boolean" | "integer" | "number" | "string" | "enum" | "strings" | "json";

export interface Field {
  name: string;
  kind: FieldKind;
  description: string;
  default: unknown;
  options: string[];
  min?: number;
  max?: number;
}

type Schema = Record<string, unknown>;
const isObj = (v: unknown): v is Schema => typeof v === "object" && v !== null && !Array.isArray(v);

function resolve(root: Schema, s: unknown): Schema {
  if (!isObj(s)) return {};
  const ref = s.$ref;
  if (typeof ref === "string" && ref.startsWith("#/")) {
    let node: unknown = root;
    for (const part of ref.slice(2).split("/")) node = isObj(node) ? node[part] : undefined;
    return { ...resolve(root, node), ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== "$ref")) };
  }
  // Option<T> in schemars: anyOf [T, null] or type [T, "null"].
  if (Array.isArray(s.anyOf)) {
    const notNull = s.anyOf.filter((a) => !(isObj(a) && a.type === "null"));
    if (notNull.length === 1) return { ...resolve(root, notNull[0]), ...s, anyOf: undefined };
  }
  if (Array.isArray(s.type)) {
    const types = s.type.filter((t) => t !== "null");
    if (types.length === 1) return { ...s, type: types[0] };
  }
  return s;
}

export function fieldsOf(schemaText: string): Field[] {
  let root: unknown;
  try {
    root = JSON.parse(schemaText);
  } catch {
    return [];
  }
  if (!isObj(root) || !isObj(root.properties)) return [];
  return Object.entries(root.properties)
    .map(([name, raw]): Field => {
      const s = resolve(root as Schema, raw);
      const base = {
        name,
        description: typeof s.description === "string" ? s.description : "",
        default: s.default,
        options: [] as string[],
        min: typeof s.minimum === "number" ? s.minimum : undefined,
        max: typeof s.maximum === "number" ? s.maximum : undefined,
      };
      if (Array.isArray(s.enum) && s.enum.every((e) => typeof e === "string"))
        return { ...base, kind: "enum", options: s.enum as string[] };
      switch (s.type) {
        case "boolean":
          return { ...base, kind: "boolean" };
        case "integer":
          return { ...base, kind: "integer" };
        case "number":
          return { ...base, kind: "number" };
        case "string":
          return { ...base, kind: "string" };
        case "array":
          if (isObj(s.items) && resolve(root as Schema, s.items).type === "string") return { ...base, kind: "strings" };
          return { ...base, kind: "json" };
        default:
          return { ...base, kind: "json" };
      }
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** The text a field shows for a value. */
export function show(f: Field, v: unknown): string {
  if (v === undefined || v === null) return "";
  if (f.kind === "strings" && Array.isArray(v)) return v.join(", ");
  if (f.kind === "json") return JSON.stringify(v);
  return String(v);
}

/**
 * The config to write: each field whose text gives a value other than its default.
 * Returns the problems instead when a field's text is not a value of its kind.
 */
export function configFrom(fields: Field[], texts: Record<string, string>): { config: Record<string, unknown>; problems: Record<string, string> } {
  const config: Record<string, unknown> = {};
  const problems: Record<string, string> = {};
  for (const f of fields) {
    const t = (texts[f.name] ?? "").trim();
    if (t === "" || t === show(f, f.default)) continue;
    let v: unknown;
    switch (f.kind) {
      case "boolean":
        v = t === "true";
        break;
      case "integer":
      case "number": {
        const n = Number(t);
        if (!Number.isFinite(n) || (f.kind === "integer" && !Number.isInteger(n))) {
          problems[f.name] = `not ${f.kind === "integer" ? "an integer" : "a number"}`;
          continue;
        }
        if (f.min !== undefined && n < f.min) problems[f.name] = `at least ${f.min}`;
        else if (f.max !== undefined && n > f.max) problems[f.name] = `at most ${f.max}`;
        v = n;
        break;
      }
      case "strings":
        v = t.split(",").map((x) => x.trim()).filter(Boolean);
        break;
      case "json":
        try {
          v = JSON.parse(t);
        } catch {
          problems[f.name] = "not JSON";
          continue;
        }
        break;
      default:
        v = t;
    }
    if (!(f.name in problems)) config[f.name] = v;
  }
  return { config, problems };
}
