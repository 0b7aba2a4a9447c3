import { useEffect, useState } from "preact/hooks";
import { type Principal, signOut, whoAmI } from "./api/client";
import { navigate, onLink, useRoute } from "./lib/router";
import { ChainList } from "./pages/chains";
import { Editor } from "./pages/editor";
import { Filters } from "./pages/filters";
import { History } from "./pages/history";
import { LivePage } from "./pages/live";
import { SignIn } from "./pages/signin";
import { Try } from "./pages/try";

export function App() {
  const [who, setWho] = useState<Principal | null | undefined>(undefined);
  const route = useRoute();
  useEffect(() => {
    whoAmI().then(setWho, () => setWho(null));
  }, []);
  useEffect(() => {
    const titles: Record<string, string> = {
      chains: "Chains",
      new: "New chain",
      live: "Live",
      filters: "Filters",
    };
    const name = "name" in route ? `${route.name} · ` : "";
    document.title = `${name}${titles[route.page] ?? route.page} · Sekisho`;
  }, [route]);

  if (who === undefined) return <p class="loading">Loading…</p>;
  if (who === null) return <SignIn onSignedIn={setWho} />;

  const nav = (href: string, label: string, active: boolean) => (
    <a href={href} onClick={onLink} aria-current={active ? "page" : undefined}>
      {label}
    </a>
  );
  const page = route.page;
  return (
    <>
      <header class="top">
        <a class="brand" href="/" onClick={onLink}>
          Sekisho
        </a>
        <nav aria-label="Main">
          {nav("/", "Chains", ["chains", "edit", "new", "history", "try"].includes(page))}
          {nav("/filters", "Filters", page === "filters")}
          {nav("/live", "Live", page === "live")}
        </nav>
        <span class="who">
          {who.name} ({who.role}){" "}
          <button
            type="button"
            class="link"
            onClick={async () => {
              await signOut();
              setWho(null);
              navigate("/");
            }}
          >
            Sign out
          </button>
        </span>
      </header>
      <main>
        {route.page === "chains" && <ChainList who={who} />}
        {route.page === "new" && <Editor who={who} />}
        {route.page === "edit" && <Editor who={who} name={route.name} key={route.name} />}
        {route.page === "history" && <History who={who} name={route.name} key={route.name} />}
        {route.page === "try" && <Try name={route.name} key={route.name} />}
        {route.page === "live" && <LivePage />}
        {route.page === "filters" && <Filters />}
        {route.page === "missing" && (
          <section>
            <h1>Not found</h1>
            <p>
              Nothing lives at <code>{route.path}</code>.{" "}
              <a href="/" onClick={onLink}>
                Back to the chains
              </a>
            </p>
          </section>
        )}
      </main>
    </>
  );
}
