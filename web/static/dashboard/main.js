// Loads every panel, refreshes them on a timer, and asks for an API key when the server wants one.

import { AuthRequired, forgetKey, getJson, storedKey, storeKey } from "./api.js";
import * as charts from "./charts.js";
import * as format from "./format.js";
import { addTierOptions, initJobs, loadJobs } from "./jobs.js";
import { initKeys, renderKeys } from "./keys.js";
import * as panels from "./panels.js";

const DEFAULT_REFRESH_S = 10;
const MIN_REFRESH_S = 2;
const KEY_NEEDED = "an API key is needed";

// Each API answer feeds these panels; when it fails they say so and the rest of the page carries on.
const SOURCES = {
  budget: { panels: ["budget"], load: () => getJson("api/budget") },
  stats: {
    panels: ["savings", "outcomes", "model-mix", "latency"],
    load: () => getJson("api/stats", { since: monthStart() }),
  },
  report: {
    panels: ["spend-month", "spend-day", "tier-mix"],
    load: () => getJson("api/reports/costs", { period: "month" }),
  },
  health: { panels: ["circuits"], load: () => getJson("api/health", {}, { okStatuses: [503] }) },
  // Admin keys only: another key is answered 403, which the panel shows.
  keys: { panels: ["keys"], load: () => getJson("api/keys") },
};

let timer = null;
let waitingForKey = false;

/** The first day of this UTC month, the period of the budget. */
function monthStart() {
  return new Date().toISOString().slice(0, 8) + "01";
}

/** Seconds between refreshes: `?refresh=N` on the page's address, else the default. */
function refreshSeconds() {
  const asked = Number(new URLSearchParams(window.location.search).get("refresh"));
  return asked >= MIN_REFRESH_S ? asked : DEFAULT_REFRESH_S;
}

/** Fail loudly inside a panel when the server's answer lacks what the panel shows. */
function requireFields(body, ...fields) {
  const missing = fields.filter((field) => body[field] === undefined || body[field] === null);
  if (missing.length) throw new Error(`the server does not report ${missing.join(", ")}`);
}

function show(panel, render) {
  try {
    render();
    panels.markAvailable(panel);
  } catch (error) {
    panels.markUnavailable(panel, error.message);
  }
}

function render(data) {
  const { budget, stats, report, health, keys } = data;
  if (budget) show("budget", () => panels.renderBudget(budget));
  if (stats) {
    show("savings", () => {
      requireFields(stats, "savings", "savings_pct", "baseline_cost");
      panels.renderSavings(stats);
    });
    show("outcomes", () => panels.renderOutcomes(stats));
    show("model-mix", () => charts.drawModelMix(stats));
    show("latency", () => {
      requireFields(stats, "latency_ms");
      charts.drawLatency(stats);
    });
  }
  if (report) {
    show("spend-month", () => charts.drawSpendMonth(report, budget));
    show("spend-day", () => charts.drawSpendPerDay(report));
    show("tier-mix", () => {
      charts.drawTierMix(report);
      addTierOptions(report.by_tier.map((row) => row.tier));
    });
  }
  if (health) show("circuits", () => panels.renderCircuits(health));
  if (keys) show("keys", () => renderKeys(keys));
}

function askForKey(error) {
  // Several requests of one refresh may be refused: ask once.
  if (waitingForKey) return;
  waitingForKey = true;
  const refused = storedKey() !== null;
  forgetKey();
  document.getElementById("forget-key").hidden = true;
  document.getElementById("key-prompt").hidden = false;
  const note = document.getElementById("key-error");
  note.hidden = !refused;
  note.textContent = refused ? `${error.message}: enter another key.` : "";
  document.getElementById("key-input").focus();
}

function onError(error, fallback) {
  if (error instanceof AuthRequired) askForKey(error);
  else fallback();
}

async function refresh() {
  clearTimeout(timer);
  const names = Object.keys(SOURCES);
  const [settled, jobs] = await Promise.all([
    Promise.allSettled(names.map((name) => SOURCES[name].load())),
    loadJobs().then(
      () => null,
      (error) => error,
    ),
  ]);
  const data = {};
  settled.forEach((result, index) => {
    const name = names[index];
    if (result.status === "fulfilled") {
      data[name] = result.value;
      return;
    }
    const reason = result.reason instanceof AuthRequired ? KEY_NEEDED : result.reason.message;
    SOURCES[name].panels.forEach((panel) => panels.markUnavailable(panel, reason));
    if (result.reason instanceof AuthRequired) askForKey(result.reason);
  });
  if (jobs) {
    panels.markUnavailable("jobs", jobs instanceof AuthRequired ? KEY_NEEDED : jobs.message);
    if (jobs instanceof AuthRequired) askForKey(jobs);
  }
  render(data);
  document.getElementById("updated").textContent =
    `Updated ${format.clockTime(new Date())} UTC · every ${refreshSeconds()} s`;
  schedule();
}

function refreshesItself() {
  return !waitingForKey && document.getElementById("auto-refresh").checked;
}

function schedule() {
  clearTimeout(timer);
  if (!refreshesItself()) return;
  // A hidden tab does not poll (every refresh counts against the key's rate limit); showing it refreshes.
  timer = setTimeout(() => {
    if (!document.hidden) refresh();
  }, refreshSeconds() * 1000);
}

function initKeyControls() {
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    storeKey(input.value.trim());
    input.value = "";
    waitingForKey = false;
    document.getElementById("key-prompt").hidden = true;
    document.getElementById("forget-key").hidden = false;
    refresh();
  });
  const forget = document.getElementById("forget-key");
  forget.hidden = storedKey() === null;
  forget.addEventListener("click", () => {
    forgetKey();
    forget.hidden = true;
    refresh();
  });
}

function init() {
  initKeyControls();
  initJobs({ onError });
  initKeys({ onChange: refresh, onError });
  document.getElementById("refresh-now").addEventListener("click", refresh);
  document.getElementById("auto-refresh").addEventListener("change", schedule);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && refreshesItself()) refresh();
  });
  refresh();
}

init();
