// The API clients. Their types are generated from the gateway's and the chainstore's
// OpenAPI documents (ui/openapi/*.json, checked against the servers by a Rust test) by
// `npm run gen`; nothing here restates a request or response shape by hand, except the
// edge's own /api/session and /api/live.
import createClient from "openapi-fetch";
import type { components as G, paths as GatewayPaths } from "./gateway";
import type { components as C, paths as ChainstorePaths } from "./chainstore";

// Every change carries this header: a page on another site cannot send it without a
// CORS preflight, which the edge never grants.
const headers = { "x-sekisho-csrf": "1" };

export const gateway = createClient<GatewayPaths>({ baseUrl: "/api/gateway", headers });
export const chainstore = createClient<ChainstorePaths>({ baseUrl: "/api/chainstore", headers });

export type Chain = C["schemas"]["sekisho.chainstore.v1.Chain"];
export type Problem = C["schemas"]["sekisho.chainstore.v1.ValidationProblem"];
export type ModerateResponse = G["schemas"]["sekisho.gateway.v1.ModerateResponse"];
export type StageTrace = G["schemas"]["sekisho.gateway.v1.StageTrace"];
export type FilterTrace = G["schemas"]["sekisho.gateway.v1.FilterTrace"];
export type Region = G["schemas"]["sekisho.filter.v1.Region"];
export type DiscoveredFilter = G["schemas"]["sekisho.gateway.v1.DiscoveredFilter"];

/** The one error shape every Sekisho HTTP API answers with. */
export interface ApiErrorBody {
  error?: { code?: number; status?: string; message?: string };
}

export class ApiError extends Error {
  constructor(
    public readonly http: number,
    public readonly status: string,
    message: string,
  ) {
    super(message);
  }
}

/** The data of an openapi-fetch result, or an ApiError carrying the server's message. */
export function must<T>(r: { data?: T; error?: unknown; response: Response }): T {
  if (r.data !== undefined && r.response.ok) return r.data;
  const e = (r.error ?? {}) as ApiErrorBody;
  throw new ApiError(
    r.response.status,
    e.error?.status ?? "UNKNOWN",
    e.error?.message ?? `${r.response.status} ${r.response.statusText}`,
  );
}

export interface Principal {
  name: string;
  role: "viewer" | "operator" | "service";
}

export async function whoAmI(): Promise<Principal | null> {
  const r = await fetch("/api/session");
  if (!r.ok) throw new ApiError(r.status, "UNKNOWN", `session: ${r.status}`);
  return ((await r.json()) as { principal: Principal | null }).principal;
}

export async function signIn(name: string, password: string): Promise<Principal> {
  const r = await fetch("/api/session", {
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify({ name, password }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = body as ApiErrorBody;
    throw new ApiError(r.status, e.error?.status ?? "UNKNOWN", e.error?.message ?? "sign-in failed");
  }
  return body as Principal;
}

export async function signOut(): Promise<void> {
  await fetch("/api/session", { method: "DELETE", headers });
}

export interface FilterSample {
  calls: number;
  mean_ms: number;
  p50_ms: number;
  p99_ms: number;
}
export interface Sample {
  at_ms: number;
  seconds: number;
  decisions: Record<string, Record<string, number>>;
  filters: Record<string, FilterSample>;
}
export interface LiveView {
  interval_ms: number;
  trouble: string | null;
  samples: Sample[];
}

export async function live(): Promise<LiveView> {
  const r = await fetch("/api/live");
  if (!r.ok) throw new ApiError(r.status, "UNKNOWN", `live view: ${r.status}`);
  return (await r.json()) as LiveView;
}
