// End-to-end: a real `sekisho dev` (chainstore, gateway, filters, edge) driven through
// the UI in Debian's Chromium by playwright-core. Screenshots of each main page go to
// ui/test-results/ (the CI's artifacts).
//
//   node e2e/run.mjs            (SEKISHO_BIN and CHROMIUM override the defaults)
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import QRCode from "qrcode";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const bin = process.env.SEKISHO_BIN ?? join(root, "target/debug/sekisho");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const shots = join(here, "../test-results");
mkdirSync(shots, { recursive: true });
const PASSWORD = "e2e-operator-password";
// The ONNX filters (face boxes) need the setup's cache: ONNX Runtime and the models.
const cache = process.env.SEKISHO_CACHE ?? join(root, ".sekisho/cache");
if (!existsSync(join(cache, "models/centerface.onnx"))) {
  console.error(`e2e: no models in ${cache}: run scripts/fetch-models.sh (or set SEKISHO_CACHE)`);
  process.exit(1);
}
// A photo with a face: scikit-image's astronaut (installed by scripts/setup.sh).
const astronaut = execFileSync("python3", [
  "-c",
  "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data', 'astronaut.png'))",
])
  .toString()
  .trim();

const data = mkdtempSync(join(tmpdir(), "sekisho-e2e-"));
// Port 0 for all three: dev prints where each listens (`sekisho ui listening on URL`),
// the gateway's line last, and no other process can take a port in between.
const dev = spawn(
  bin,
  ["dev", "--listen", "127.0.0.1:0", "--chainstore-listen", "127.0.0.1:0", "--ui-listen", "127.0.0.1:0", "--data-dir", data],
  {
    env: { SEKISHO_LOG: "warn,ort=error", ...process.env, SEKISHO_CACHE: cache, SEKISHO_DEV_PASSWORD: PASSWORD, SEKISHO_DEV_TOKEN: "e2e-token" },
    stdio: ["ignore", "pipe", "inherit"],
  },
);
let out = "";
process.on("exit", () => dev.kill("SIGKILL"));
const listening = await new Promise((ok, fail) => {
  const t = setTimeout(() => fail(new Error(`sekisho dev did not start:\n${out}`)), 60_000);
  dev.stdout.on("data", (d) => {
    out += d;
    // Whole lines only: a chunk can end inside one.
    if (/^sekisho gateway listening on \S+\n/m.test(out)) {
      clearTimeout(t);
      ok(Object.fromEntries([...out.matchAll(/^sekisho (\w+) listening on (\S+)\n/gm)].map((m) => [m[1], m[2]])));
    }
  });
  dev.on("exit", (code) => fail(new Error(`sekisho dev exited with ${code}:\n${out}`)));
});
const base = listening.ui;

const consoleErrors = [];
let failed = false;
let browser;
try {
  browser = await chromium.launch({
    executablePath: browserPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const page = await browser.newPage({ viewport: { width: 1366, height: 820 } });
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));
  const step = (name) => console.log(`e2e: ${name}`);

  step("sign in with the keyboard (a wrong password first)");
  await page.goto(base);
  await page.getByLabel("Name").waitFor();
  await page.keyboard.type("operator");
  await page.keyboard.press("Tab");
  await page.keyboard.type("wrong");
  await page.keyboard.press("Enter");
  await page.getByRole("alert").filter({ hasText: "wrong name or password" }).waitFor();
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByLabel("Password").press("Enter");
  await page.getByRole("heading", { name: "Chains" }).waitFor();
  await page.getByRole("link", { name: "comment-text" }).waitFor();
  await page.getByRole("link", { name: "profile-photo" }).waitFor();
  await page.screenshot({ path: join(shots, "chains.png"), fullPage: true });

  step("a new chain: a validation error at its field, then fixed and created");
  await page.getByRole("link", { name: "New chain" }).click();
  const yaml = page.locator("#chain-yaml");
  const bad = `name: e2e-qr
content_types: [image/png]
stages:
  - id: codes
    filters:
      - use: no-such-filter
    aggregate: max
    branches:
      - when: "score >= 0.5"
        decide: {decision: REVIEW, reason: qr_code}
default_decision: APPROVE
`;
  await yaml.fill(bad);
  const filterNode = page.locator('[data-path="stages[0].filters[0]"]');
  await filterNode.locator(".problem").filter({ hasText: "no-such-filter" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Create" }).isDisabled(), true, "an invalid chain cannot be created");
  assert.equal(await page.locator(".gutter .bad").count() > 0, true, "the problem's line is marked");
  await page.screenshot({ path: join(shots, "editor-invalid.png"), fullPage: true });
  await yaml.fill(bad.replace("no-such-filter", "qr-code"));
  await page.locator("#chain-problems").getByText("Valid.").waitFor();
  await page.getByLabel("Comment").fill("e2e: first version");
  await page.getByRole("button", { name: "Create" }).click();
  await page.waitForURL(`${base}/chains/e2e-qr`);
  await page.getByText("version 1").waitFor();

  step("add a filter that discovery found, its config from its JSON Schema");
  await page.getByText("Add a filter").click();
  await page.getByLabel("Filter", { exact: true }).selectOption("noop");
  await page.getByLabel("As", { exact: true }).fill("extra");
  await page.getByLabel("delay_ms").fill("1.5");
  await page.getByRole("button", { name: "Add noop to codes" }).click();
  await page.getByRole("alert").filter({ hasText: "delay_ms: not an integer" }).waitFor();
  await page.getByLabel("delay_ms").fill("0");
  await page.getByLabel("score", { exact: true }).fill("0.25");
  await page.getByRole("button", { name: "Add noop to codes" }).click();
  await page.locator('[data-path="stages[0].filters[1]"]').getByText("noop as extra").waitFor();
  assert.match(await yaml.inputValue(), /- \{use: noop, as: extra, config: \{score: 0.25\}\}/);
  assert.match(await yaml.inputValue(), /content_types: \[image\/png\]/, "the rest of the YAML keeps its layout");
  await page.screenshot({ path: join(shots, "editor-add-filter.png"), fullPage: true });

  step("forms: chain settings, a new stage, a rule with CEL help, a filter's policy, the aggregator");
  const outlinePane = page.locator(".outline");
  await outlinePane.getByText("Chain settings").click();
  await page.getByLabel("audit sample rate").fill("2");
  await page.getByLabel("timeout", { exact: true }).fill("1s");
  await page.getByRole("button", { name: "Apply chain settings" }).click();
  await page.getByRole("alert").filter({ hasText: "audit sample rate: a share from 0 to 1" }).waitFor();
  await page.getByLabel("audit sample rate").fill("0.1");
  await page.getByRole("button", { name: "Apply chain settings" }).click();
  assert.match(await yaml.inputValue(), /audit_sample_rate: 0.1/);
  assert.match(await yaml.inputValue(), /defaults: \{timeout: 1s\}/);
  await page.locator("#chain-problems").getByText("Valid.").waitFor();

  // A stage without filters: the chainstore's problem shows at that stage.
  await outlinePane.getByText("Add a stage").click();
  await page.getByLabel("new stage id").fill("second-look");
  await page.getByRole("button", { name: "Add the stage" }).click();
  await page.locator('[data-path="stages[1]"]').locator(".problem").filter({ hasText: "at least one filter" }).waitFor();
  assert.equal(await page.getByRole("button", { name: "Save", exact: true }).isDisabled(), true, "an invalid chain cannot be saved");
  // "Add a filter" is still open from the step before.
  await page.getByLabel("Filter", { exact: true }).selectOption("noop");
  await page.getByLabel("To stage").selectOption("second-look");
  await page.getByLabel("As", { exact: true }).fill("late");
  await page.getByRole("button", { name: "Add noop to second-look" }).click();
  await page.locator('[data-path="stages[1].filters[0]"]').getByText("noop as late").waitFor();
  await page.locator("#chain-problems").getByText("Valid.").waitFor();

  // A rule naming a filter the chain does not have: the problem shows at the rule.
  await outlinePane.getByText("Add a rule to codes").click();
  await page.getByLabel("when (CEL)").fill("filters.nope.score > 0.5");
  await page.getByLabel("then", { exact: true }).selectOption("goto");
  await page.getByLabel("goto", { exact: true }).selectOption("second-look");
  await page.getByRole("button", { name: "Add the rule" }).click();
  const rule = page.locator('[data-path="stages[0].branches[1]"]');
  await rule.locator(".problem").filter({ hasText: "nope" }).waitFor();
  await page.screenshot({ path: join(shots, "editor-forms.png"), fullPage: true });
  await rule.getByText("Edit rule 2").click();
  await page.getByLabel("when (CEL)").fill("");
  await rule.getByRole("button", { name: "filters.extra.score", exact: true }).click();
  await page.getByLabel("when (CEL)").press("End");
  await page.getByLabel("when (CEL)").pressSequentially(" >= 0.2");
  await page.getByRole("button", { name: "Apply the rule" }).click();
  await page.locator("#chain-problems").getByText("Valid.").waitFor();
  assert.match(await yaml.inputValue(), /- when: filters\.extra\.score >= 0\.2\n\s+goto: second-look/);

  // The extra filter becomes a shadow with its own timeout; the stage votes.
  await page.locator('[data-path="stages[0].filters[1]"]').getByText("Edit extra").click();
  await page.getByLabel("shadow").check();
  await page.locator('[data-path="stages[0].filters[1]"]').getByLabel("timeout", { exact: true }).fill("250ms");
  await page.getByRole("button", { name: "Apply to extra" }).click();
  assert.match(await yaml.inputValue(), /\{use: noop, as: extra, config: \{score: 0.25\}, shadow: true, timeout: 250ms\}/);
  await outlinePane.getByText("Edit stage codes").click();
  await page.getByLabel("aggregator", { exact: true }).selectOption("vote");
  await page.getByLabel("k", { exact: true }).fill("1");
  await page.getByRole("button", { name: "Apply to stage codes" }).click();
  assert.match(await yaml.inputValue(), /aggregate: \{builtin: vote, k: 1\}/);
  await page.locator("#chain-problems").getByText("Valid.").waitFor();
  await page.screenshot({ path: join(shots, "editor-forms-valid.png"), fullPage: true });

  step("edit and save: version 2, with the signed-in author");
  await yaml.fill((await yaml.inputValue()).replace("reason: qr_code", "reason: has_qr"));
  await page.locator("#chain-problems").getByText("Valid.").waitFor();
  await page.getByLabel("Comment").fill("e2e: rename the reason");
  await page.keyboard.press("Control+s");
  await page.getByRole("status").filter({ hasText: "Saved version 2" }).waitFor();
  const v2 = await (await fetch(`${listening.chainstore}/v1/chains/e2e-qr`)).json();
  assert.equal(v2.version, "2");
  assert.equal(v2.author, "operator", "the edge writes the signed-in name as the author");
  assert.match(v2.document, /use: noop, as: extra/);

  step("a stale save shows the conflict and keeps both");
  await yaml.fill(v2.document.replace("reason: has_qr", "reason: mine"));
  const theirs = v2.document.replace("reason: has_qr", "reason: theirs");
  const put = await fetch(`${listening.chainstore}/v1/chains/e2e-qr`, {
    method: "PUT",
    body: JSON.stringify({ document: theirs, expectedVersion: "2", author: "someone-else", comment: "saved first" }),
  });
  assert.equal(put.status, 200);
  await page.locator("#chain-problems").getByText("Valid.").waitFor();
  await page.getByRole("button", { name: "Save", exact: true }).click();
  const conflict = page.locator(".conflict");
  await conflict.getByText("Someone saved first").waitFor();
  await conflict.getByText("someone-else").waitFor();
  await page.screenshot({ path: join(shots, "conflict.png"), fullPage: true });
  await page.getByRole("button", { name: "Take theirs (drop my edit)" }).click();
  assert.equal(await yaml.inputValue(), theirs);
  await page.getByText("version 3").waitFor();

  step("history: a diff between two versions, and a rollback");
  await page.getByRole("link", { name: "History" }).click();
  await page.getByRole("heading", { name: "History of e2e-qr" }).waitFor();
  await page.getByLabel("compare from v1").check();
  await page.getByLabel("compare to v3").check();
  await page.locator("table.diff tr.add").filter({ hasText: "reason: theirs" }).waitFor();
  await page.locator("table.diff tr.del").filter({ hasText: "reason: qr_code" }).waitFor();
  await page.getByRole("button", { name: "Roll back to v1" }).click();
  await page.getByRole("button", { name: "Confirm roll back to v1" }).click();
  await page.getByRole("status").filter({ hasText: "version 4 has the document of version 1" }).waitFor();
  await page.screenshot({ path: join(shots, "history.png"), fullPage: true });
  const v4 = await (await fetch(`${listening.chainstore}/v1/chains/e2e-qr`)).json();
  assert.equal(v4.version, "4");
  assert.match(v4.document, /reason: qr_code/);

  step("try an image: the decision, the path and the QR code's box");
  const qr = await QRCode.toBuffer("https://example.com/sekisho", { type: "png", scale: 8, margin: 4 });
  await page.goto(`${base}/chains/e2e-qr/try`);
  await page.getByRole("tab", { name: "Image" }).click();
  await page.getByLabel("Image file").setInputFiles({ name: "qr.png", mimeType: "image/png", buffer: qr });
  await page.getByRole("button", { name: "Run through e2e-qr" }).click();
  await page.getByTestId("decision").filter({ hasText: "REVIEW" }).waitFor();
  await page.getByText("qr_code", { exact: true }).waitFor();
  await page.locator("svg.boxes rect").first().waitFor();
  const box = await page.locator("svg.boxes rect").first().boundingBox();
  assert.ok(box && box.width > 20 && box.height > 20, `the QR code's box is drawn: ${JSON.stringify(box)}`);
  await page.screenshot({ path: join(shots, "try.png"), fullPage: true });

  step("try a photo on profile-photo: the face's box");
  await page.goto(`${base}/chains/profile-photo/try`);
  await page.getByRole("tab", { name: "Image" }).click();
  await page.getByLabel("Image file").setInputFiles({ name: "astronaut.png", mimeType: "image/png", buffer: readFileSync(astronaut) });
  await page.getByRole("button", { name: "Run through profile-photo" }).click();
  await page.getByTestId("decision").filter({ hasText: "APPROVE" }).waitFor({ timeout: 30_000 });
  const faces = page.locator("svg.boxes rect");
  assert.equal(await faces.count(), 1, "one face, one box");
  const face = await faces.first().boundingBox();
  const shown = await page.locator("figure.preview img").boundingBox();
  // The astronaut's face is in the upper middle of the photo.
  assert.ok(face && shown, "the box and the photo are drawn");
  const cx = (face.x + face.width / 2 - shown.x) / shown.width;
  const cy = (face.y + face.height / 2 - shown.y) / shown.height;
  assert.ok(cx > 0.3 && cx < 0.7 && cy > 0.1 && cy < 0.5, `the face's box is on the face: centre ${cx.toFixed(2)}, ${cy.toFixed(2)}`);
  assert.equal(await page.locator("svg.boxes circle").count(), 5, "five landmarks on the face");
  await page.screenshot({ path: join(shots, "try-face.png"), fullPage: true });

  step("try a text on the sample chain");
  await page.goto(`${base}/chains/comment-text/try`);
  const runText = page.getByRole("button", { name: "Run through comment-text" });
  assert.ok(await runText.isDisabled(), "an empty text is not sent (the gateway refuses it)");
  await page.getByLabel("Text").fill("click here for free money");
  await runText.click();
  await page.getByTestId("decision").filter({ hasText: "REJECT" }).waitFor();

  step("the live view draws the decisions");
  await page.getByRole("link", { name: "Live" }).click();
  await page.locator("figure.chart path.line").first().waitFor({ timeout: 15_000 });
  await page.screenshot({ path: join(shots, "live.png"), fullPage: true });

  step("filters and sign out");
  await page.getByRole("link", { name: "Filters" }).click();
  await page.getByRole("heading", { name: /qr-code/ }).waitFor();
  // Where each model runs, per endpoint (dev runs the ONNX filters on the CPU); filters
  // without a model have no such column.
  for (const [filter, column] of [["face-detect", ["cpu"]], ["ng-image", ["cpu"]], ["qr-code", []]]) {
    const article = page.locator("article.filter", { has: page.getByRole("heading", { name: new RegExp(`^${filter}`) }) });
    const runsOn = await article.locator("thead th").allTextContents();
    assert.equal(runsOn.includes("Runs on"), column.length > 0, `${filter}: ${runsOn}`);
    if (column.length) {
      const i = runsOn.indexOf("Runs on");
      assert.deepEqual(await article.locator(`tbody td:nth-child(${i + 1})`).allTextContents(), column, filter);
      assert.match((await article.locator(`tbody td:nth-child(${i + 1})`).getAttribute("title")) ?? "", /^execution_provider: cpu\n(.+\n)*model: .+$/m);
    }
  }
  await page.screenshot({ path: join(shots, "filters.png"), fullPage: true });
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("Password").waitFor();
  const after = await page.evaluate(async () => (await fetch("/api/chainstore/v1/chains")).status);
  assert.equal(after, 401, "signed out, the API refuses");

  // The wrong password (401), the stale save (409) and the check after signing out (401)
  // are the only failed requests, and nothing else reached the console.
  const unexpected = consoleErrors.filter((e) => !/status of (401|409)/.test(e));
  assert.deepEqual(unexpected, [], "no console errors");
  assert.equal(consoleErrors.length, 3, `expected failed requests: ${JSON.stringify(consoleErrors)}`);
  console.log("e2e: all passed");
} catch (e) {
  failed = true;
  console.error(e);
  console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
} finally {
  await browser?.close();
  dev.kill("SIGTERM");
  rmSync(data, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
