// The ops console in headless Chromium, driven by playwright-core (no
// browser download: the system's Chromium). Run by tests/tests/console.rs,
// which prepares the data and checks the outcome through the API.
//
// The pages run under their Content-Security-Policy (no inline script or
// style): any violation the browser reports fails the test, and the test
// first shows that an injected inline script is indeed refused.
//
// Env: OPS_URL (the api), OPS_KEY (an admin key other than the one that
// requested the adjustment), DEAD_JOB_ID, ADJUSTMENT_ID, SCREENSHOTS (a
// directory), KOBATELA_PLAYWRIGHT_CORE (the module's directory),
// KOBATELA_CHROMIUM (the browser).
"use strict";
const path = require("path");
const fs = require("fs");
const { chromium } = require(process.env.KOBATELA_PLAYWRIGHT_CORE || "playwright-core");

const need = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

async function main() {
  const base = need("OPS_URL");
  const key = need("OPS_KEY");
  const deadJob = need("DEAD_JOB_ID");
  const adjustment = need("ADJUSTMENT_ID");
  const shots = need("SCREENSHOTS");
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.KOBATELA_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const shot = (name) => page.screenshot({ path: path.join(shots, name), fullPage: true });
  // Nothing but the api: any other request fails the test.
  const outside = [];
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(base)) return route.continue();
    outside.push(url);
    return route.abort();
  });
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  // Violations of the pages' policy, as the page sees them and as the
  // browser logs them.
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile || ""}:${e.lineNumber || 0})`));
  });
  const cspLogged = [];
  page.on("console", (msg) => {
    if (msg.type() === "error" && /Content Security Policy/i.test(msg.text())) cspLogged.push(msg.text());
  });
  const violations = async () => (await page.evaluate(() => window.__cspViolations.slice())).concat(cspLogged);
  try {
    await page.goto(base + "/ops");
    // The policy is enforced: an inline script injected into the page does
    // not run, and the violation is seen (so the checks below can see one).
    const ran = await page.evaluate(async () => {
      const s = document.createElement("script");
      s.textContent = "window.__inlineRan = true;";
      document.body.append(s);
      await new Promise((r) => setTimeout(r, 100));
      return window.__inlineRan === true;
    });
    if (ran) throw new Error("an injected inline script ran: the page has no Content-Security-Policy");
    if (!(await violations()).length) throw new Error("the blocked inline script was not reported as a CSP violation");
    await page.reload();
    cspLogged.length = 0;
    await shot("01-sign-in.png");
    await page.fill("[data-testid=key]", key);
    await page.click("[data-testid=sign-in]");
    await page.waitForFunction(() => document.querySelector("[data-testid=who]").textContent.includes("admin"));
    // The key is in sessionStorage, and nowhere a URL or a cookie could carry it.
    const kept = await page.evaluate(() => ({ stored: sessionStorage.getItem("kobatela.ops.key"), cookie: document.cookie, url: location.href, local: localStorage.length }));
    if (kept.stored !== key) throw new Error("the key is not in sessionStorage");
    if (kept.cookie.includes(key) || kept.url.includes(key) || kept.local !== 0) throw new Error("the key leaked: " + JSON.stringify(kept));

    // The dead job, with its retry button; retried, it succeeds.
    const deadRow = page.locator(`[data-testid=dead-jobs] tr[data-job="${deadJob}"]`);
    await deadRow.waitFor({ timeout: 20000 });
    await page.locator(`[data-testid=queues] tr[data-kind=purchase]`).waitFor();
    await shot("02-dead-job.png");
    await deadRow.locator("[data-testid=retry]").click();
    await page.locator(`[data-testid=retried] tr[data-job="${deadJob}"] [data-testid=retried-status]`).filter({ hasText: "succeeded" }).waitFor({ timeout: 30000 });
    await deadRow.waitFor({ state: "detached", timeout: 10000 });
    await shot("03-retried-and-succeeded.png");

    // The pending SAKA adjustment, approved by this second admin.
    const adjRow = page.locator(`[data-testid=saka-pending] tr[data-adjustment="${adjustment}"]`);
    await adjRow.waitFor({ timeout: 20000 });
    await shot("04-saka-pending.png");
    await adjRow.locator("[data-testid=approve]").click();
    await page.locator("[data-testid=status]").filter({ hasText: `adjustment ${adjustment} approved` }).waitFor({ timeout: 20000 });
    await adjRow.waitFor({ state: "detached", timeout: 10000 });
    // The approval is in the alerts/audit trail's world; the other panels answered.
    await page.locator("[data-testid=cron] tr").first().waitFor();
    await page.locator("[data-testid=invariants]").waitFor();
    await shot("05-approved.png");
    const onOps = await violations();
    if (onOps.length) throw new Error("CSP violations on /ops: " + onOps.join("; "));

    // The API reference renders under the same policy.
    await page.goto(base + "/docs");
    await page.locator("details.op").first().waitFor({ timeout: 20000 });
    const rendered = await page.locator("details.op").count();
    if (rendered < 50) throw new Error(`/docs rendered ${rendered} operations`);
    await shot("06-docs.png");
    const onDocs = await violations();
    if (onDocs.length) throw new Error("CSP violations on /docs: " + onDocs.join("; "));
    if (outside.length) throw new Error("requests outside the api: " + outside.join(", "));
    if (problems.length) throw new Error("page errors: " + problems.join("; "));
    console.log("console test: signed in, retried the dead job (succeeded), approved the adjustment, read /docs; no CSP violation; screenshots in " + shots);
  } catch (e) {
    await shot("failure.png").catch(() => {});
    throw e;
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error("console test failed:", e && e.stack ? e.stack : e);
  process.exit(1);
});
