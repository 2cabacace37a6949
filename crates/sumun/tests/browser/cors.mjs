// Drives headless Chromium for crates/sumun/tests/cors.rs.
//
//   node cors.mjs [--calls N] PAGE_URL...
//
// Opens each page (in order, in one browser context so the preflight cache is shared as in
// one browser window), waits for the page's `window.callApi` and calls it N times (default 2)
// one after the other. Prints one JSON document on stdout:
//   {"browser": "<version>", "pages": [{"url": ..., "calls": [<what callApi returned>, ...]}]}
// Exits non-zero (with the reason on stderr) when the browser or a page cannot be driven;
// a failed fetch is a result, not a driver failure.

import { chromium } from "playwright-core";

const EXECUTABLE = process.env.SUMUN_CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = 15_000;
// The whole run is bounded even if the browser hangs somewhere Playwright does not time out.
const WATCHDOG_MS = 90_000;

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node cors.mjs [--calls N] PAGE_URL...\n`);
  process.exit(64);
}

const args = process.argv.slice(2);
let calls = 2;
const urls = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--calls") {
    calls = Number.parseInt(args[++i] ?? "", 10);
    if (!Number.isInteger(calls) || calls < 1 || calls > 20) usage("--calls takes 1..20");
  } else {
    urls.push(args[i]);
  }
}
if (urls.length === 0) usage("no page URL");

const watchdog = setTimeout(() => {
  process.stderr.write(`cors.mjs: no result after ${WATCHDOG_MS} ms\n`);
  process.exit(70);
}, WATCHDOG_MS);
watchdog.unref();

let browser;
try {
  browser = await chromium.launch({
    executablePath: EXECUTABLE,
    // Root in a container: Chromium's sandbox needs user namespaces it may not get.
    args: ["--no-sandbox"],
    timeout: 30_000,
  });
  const context = await browser.newContext();
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  const pages = [];
  for (const url of urls) {
    const page = await context.newPage();
    const console_lines = [];
    page.on("console", (m) => console_lines.push(`${m.type()}: ${m.text()}`));
    const res = await page.goto(url, { waitUntil: "load" });
    if (!res || !res.ok()) throw new Error(`page ${url} answered ${res ? res.status() : "nothing"}`);
    await page.waitForFunction(() => typeof window.callApi === "function");
    const results = [];
    for (let i = 0; i < calls; i++) {
      results.push(await page.evaluate(() => window.callApi()));
    }
    pages.push({ url, origin: await page.evaluate(() => location.origin), calls: results, console: console_lines });
    await page.close();
  }
  process.stdout.write(`${JSON.stringify({ browser: browser.version(), pages })}\n`);
  await browser.close();
  process.exit(0);
} catch (e) {
  process.stderr.write(`cors.mjs: ${e && e.stack ? e.stack : e}\n`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
