// A small History-API router: the edge serves index.html for every path that is not a
// file, so these URLs survive a reload.
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { page: "chains" }
  | { page: "new" }
  | { page: "edit"; name: string }
  | { page: "history"; name: string }
  | { page: "try"; name: string }
  | { page: "live" }
  | { page: "filters" }
  | { page: "missing"; path: string };

export function parseRoute(path: string): Route {
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "chains")) return { page: "chains" };
  if (parts[0] === "chains" && parts.length === 2 && parts[1] === "new") return { page: "new" };
  if (parts[0] === "chains" && parts.length === 2) return { page: "edit", name: parts[1] };
  if (parts[0] === "chains" && parts.length === 3 && parts[2] === "history")
    return { page: "history", name: parts[1] };
  if (parts[0] === "chains" && parts.length === 3 && parts[2] === "try")
    return { page: "try", name: parts[1] };
  if (parts.length === 1 && parts[0] === "live") return { page: "live" };
  if (parts.length === 1 && parts[0] === "filters") return { page: "filters" };
  return { page: "missing", path };
}

export function chainPath(name: string, page?: "history" | "try"): string {
  return `/chains/${encodeURIComponent(name)}${page ? `/${page}` : ""}`;
}

export function navigate(path: string): void {
  if (path === location.pathname) return;
  history.pushState(null, "", path);
  dispatchEvent(new PopStateEvent("popstate"));
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.pathname));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.pathname));
    addEventListener("popstate", on);
    return () => removeEventListener("popstate", on);
  }, []);
  return route;
}

/** A link that navigates without reloading (and still works with a middle click). */
export function onLink(e: MouseEvent): void {
  const a = e.currentTarget as HTMLAnchorElement;
  if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute("href") ?? "/");
}
