import { defineConfig } from "vitest/config";

// `npm run dev` serves the app with hot reload and sends /api to a running edge
// (`sekisho dev` listens on 127.0.0.1:8000).
export default defineConfig({
  build: {
    outDir: "dist",
    // No inline script: the edge's CSP allows only 'self'.
    modulePreload: { polyfill: false },
    sourcemap: false,
  },
  server: {
    proxy: { "/api": process.env.SEKISHO_EDGE ?? "http://127.0.0.1:8000" },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
