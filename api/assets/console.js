"use strict";
// The key lives in sessionStorage only (this tab, until it closes): never
// in a URL, a cookie or localStorage. Every call sends it as a bearer token.
const KEY = "kobatela.ops.key";
const retried = new Map(); // job id -> last receipt seen
const alertTypes = new Set();
let timer = null;

const $ = (id) => document.getElementById(id);
const text = (v) => (v === null || v === undefined ? "" : String(v));
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids.flat()) e.append(k instanceof Node ? k : document.createTextNode(text(k)));
  return e;
}
function table(node, head, rows, empty) {
  node.replaceChildren(el("tr", {}, head.map((h) => el("th", {}, h))));
  if (!rows.length) node.append(el("tr", {}, el("td", { colspan: head.length, class: "muted" }, empty || "none")));
  rows.forEach((r) => node.append(r));
}
function ago(iso) {
  if (!iso) return "";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}
function say(message, bad) {
  $("status").textContent = message;
  $("status").className = bad ? "bad" : "muted";
}

async function call(method, path, body, extra) {
  const key = sessionStorage.getItem(KEY);
  const headers = Object.assign({ Authorization: "Bearer " + key }, extra || {});
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store" });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const why = data && (data.code ? `${data.code}: ${data.detail}` : JSON.stringify(data));
    throw new Error(`${method} ${path}: ${res.status} ${why || ""}`);
  }
  return data;
}
const idem = () => (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());

async function renderQueues() {
  const { items } = await call("GET", "/ops/queues");
  table($("queues").querySelector("table"), ["kind", "queued", "running", "oldest", "dead", "stream", "pending", "consumers"],
    items.map((q) => {
      const live = q.consumers.filter((c) => c.idle_ms < 10000).length; // as the workers report their polls
      return el("tr", { "data-kind": q.kind },
        el("td", {}, q.kind), el("td", { class: "n" }, q.queued), el("td", { class: "n" }, q.running),
        el("td", { class: "n " + (q.oldest_queued_age_s > 60 ? "bad" : "") }, q.oldest_queued_age_s.toFixed(1) + " s"),
        el("td", { class: "n " + (q.dead > 0 ? "bad" : "") }, q.dead),
        el("td", { class: "n" }, q.stream_length), el("td", { class: "n" }, q.pending),
        el("td", { class: live ? "good" : "bad", title: q.consumers.map((c) => `${c.name}: idle ${c.idle_ms} ms`).join("\n") }, `${live} alive / ${q.consumers.length}`));
    }));
}

async function retry(id, button) {
  button.disabled = true;
  try {
    const receipt = await call("POST", `/jobs/${id}/retry`, {});
    retried.set(id, receipt);
    say(`job ${id} queued again`);
  } catch (e) {
    say(e.message, true);
    button.disabled = false;
  }
  await refresh();
}

async function renderDead() {
  const { items } = await call("GET", "/jobs?status=dead&limit=100");
  table($("dead").querySelector("table"), ["job", "kind", "attempts", "error", "finished", ""],
    items.map((j) => el("tr", { "data-job": j.job_id },
      el("td", {}, el("code", {}, j.job_id)), el("td", {}, j.kind), el("td", { class: "n" }, j.attempts),
      el("td", {}, j.error ? `${text(j.error.code)} ${text(j.error.detail)}` : ""), el("td", {}, ago(j.finished_at)),
      el("td", {}, el("button", { class: "danger", type: "button", "data-testid": "retry", onclick: (ev) => retry(j.job_id, ev.target) }, "Retry")))),
    "no dead job");
  for (const id of retried.keys()) {
    try { retried.set(id, await call("GET", `/jobs/${id}`)); } catch (e) { /* shown as last seen */ }
  }
  table($("dead").querySelectorAll("table")[1], ["job", "kind", "status", "attempts", "finished"],
    [...retried.values()].map((j) => el("tr", { "data-job": j.job_id },
      el("td", {}, el("code", {}, j.job_id)), el("td", {}, j.kind),
      el("td", { class: j.status === "succeeded" ? "good" : j.status === "dead" || j.status === "failed" ? "bad" : "warn", "data-testid": "retried-status" }, j.status),
      el("td", { class: "n" }, j.attempts), el("td", {}, ago(j.finished_at)))),
    "nothing retried from this page");
}

async function decide(id, action, button) {
  button.disabled = true;
  try {
    if (action === "approve") {
      const receipt = await call("POST", `/saka/adjustments/${id}/approve`, {}, { "Idempotency-Key": idem(), Prefer: "wait=10" });
      say(receipt.status === "succeeded" ? `adjustment ${id} approved` : `approval of ${id}: ${receipt.status} ${receipt.error ? receipt.error.code : ""}`, receipt.status !== "succeeded");
    } else {
      const note = prompt("Why is it rejected?") || "";
      await call("POST", `/saka/adjustments/${id}/reject`, { note });
      say(`adjustment ${id} rejected`);
    }
  } catch (e) {
    say(e.message, true);
  }
  await refresh();
}

async function renderSaka() {
  const { items } = await call("GET", "/saka/adjustments?status=PENDING_APPROVAL&limit=100");
  table($("saka").querySelector("table"), ["adjustment", "user", "grains", "note", "requested by", "expires", ""],
    items.map((a) => el("tr", { "data-adjustment": a.id },
      el("td", {}, el("code", {}, a.id)), el("td", {}, el("code", {}, a.user_id)), el("td", { class: "n" }, a.amount),
      el("td", {}, a.note), el("td", {}, el("code", {}, a.requested_by)), el("td", {}, a.expires_at || ""),
      el("td", {}, el("button", { class: "primary", type: "button", "data-testid": "approve", onclick: (ev) => decide(a.id, "approve", ev.target) }, "Approve"), " ",
        el("button", { class: "danger", type: "button", "data-testid": "reject", onclick: (ev) => decide(a.id, "reject", ev.target) }, "Reject")))),
    "nothing waits for approval");
}

async function renderAlerts() {
  const type = $("alert-type").value;
  const { items } = await call("GET", "/alerts?limit=50" + (type ? "&type=" + encodeURIComponent(type) : ""));
  for (const a of items) {
    if (!alertTypes.has(a.type)) {
      alertTypes.add(a.type);
      $("alert-type").append(el("option", { value: a.type }, a.type));
    }
  }
  table($("alerts").querySelector("table"), ["when", "type", "message"],
    items.map((a) => el("tr", {}, el("td", { title: a.created_at }, ago(a.created_at)), el("td", {}, a.type), el("td", {}, a.message))), "no alert");
}

async function renderCron() {
  const { items } = await call("GET", "/ops/cron");
  table($("cron").querySelector("table"), ["schedule", "last tick", "claimed by", "job"],
    items.map((c) => el("tr", {}, el("td", {}, c.schedule), el("td", { title: c.tick }, ago(c.tick)), el("td", {}, c.claimed_by), el("td", {}, el("code", {}, c.job_id || "")))),
    "no tick yet");
}

function showInvariants(run) {
  $("inv-run").textContent = run.run_id ? `run ${run.run_id}, ${ago(run.checked_at)}` : "never run";
  table($("invariants").querySelector("table"), ["invariant", "violations", "what it checks", "sample"],
    run.invariants.map((i) => el("tr", {}, el("td", {}, i.name), el("td", { class: "n " + (i.violations ? "bad" : "good") }, i.violations),
      el("td", {}, i.description), el("td", {}, el("code", {}, i.sample.length ? JSON.stringify(i.sample).slice(0, 300) : "")))), "");
}
async function renderInvariants() {
  showInvariants(await call("GET", "/ops/invariants"));
}

async function refresh() {
  const parts = [renderQueues, renderDead, renderSaka, renderAlerts, renderCron, renderInvariants];
  const results = await Promise.allSettled(parts.map((f) => f()));
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (failed.length) say(failed[0], true);
  else if (!$("status").classList.contains("bad")) say("updated " + new Date().toLocaleTimeString());
}

async function start() {
  try {
    const me = await call("GET", "/me");
    if (me.key.role !== "admin" && me.key.role !== "support") throw new Error(`a ${me.key.role} key cannot use the console`);
    $("who").textContent = `${me.user.username} (${me.key.role}, ${me.key.prefix}…)`;
  } catch (e) {
    sessionStorage.removeItem(KEY);
    say("sign-in failed: " + e.message, true);
    return;
  }
  $("signin").classList.add("hidden");
  $("signout").classList.remove("hidden");
  $("console").classList.remove("hidden");
  say("signed in");
  await refresh();
  timer = setInterval(refresh, 3000);
}

$("signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  $("key").value = "";
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  start();
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  location.reload();
});
$("alert-type").addEventListener("change", () => renderAlerts().catch((e) => say(e.message, true)));
$("run-invariants").addEventListener("click", async () => {
  try { showInvariants(await call("GET", "/ops/invariants?run=1")); say("invariants run"); } catch (e) { say(e.message, true); }
});
if (sessionStorage.getItem(KEY)) start();
