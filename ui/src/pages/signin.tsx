import { useState } from "preact/hooks";
import { type Principal, signIn } from "../api/client";

export function SignIn({ onSignedIn }: { onSignedIn: (p: Principal) => void }) {
  const [name, setName] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  return (
    <main class="signin">
      <h1>Sekisho</h1>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError("");
          try {
            onSignedIn(await signIn(name, password));
          } catch (err) {
            setError((err as Error).message);
          } finally {
            setBusy(false);
          }
        }}
      >
        <label>
          Name
          <input name="name" autoComplete="username" required value={name} onInput={(e) => setName(e.currentTarget.value)} autoFocus />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autoComplete="current-password"
            required
            value={password}
            onInput={(e) => setPassword(e.currentTarget.value)}
          />
        </label>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
      <p class="hint">
        <code>sekisho dev</code> prints the operator's password when it starts.
      </p>
    </main>
  );
}
