// The recent-jobs table (search, status and tier filters, paging) and the job detail dialog.

import { getJson } from "./api.js";
import * as format from "./format.js";
import { markAvailable, markUnavailable } from "./panels.js";
import { cell } from "./table.js";

const PAGE_SIZE = 25;
const MAX_PAGE_SIZE = 200;
const SEARCH_DELAY_MS = 250;

const state = { shown: 0, cursor: null, sequence: 0 };
let reportError = () => {};

function filters() {
  return {
    q: document.getElementById("job-search").value.trim(),
    status: document.getElementById("job-status").value,
    tier: document.getElementById("job-tier").value,
  };
}

function badge(status) {
  const td = document.createElement("td");
  const span = document.createElement("span");
  span.className = `status status-${status}`;
  span.textContent = status;
  td.append(span);
  return td;
}

function flags(job) {
  const names = [];
  if (job.escalated) names.push("escalated");
  if (job.cached) names.push("cached");
  if (job.error_code) names.push(job.error_code);
  return names.join(", ");
}

function row(job) {
  const tr = document.createElement("tr");
  tr.dataset.jobId = job.job_id;
  tr.tabIndex = 0;
  tr.append(
    cell(format.utcTime(job.created_at)),
    badge(job.status),
    cell(job.tier ?? "–"),
    cell(job.model_used ?? "–"),
    cell(job.difficulty_level ?? "–"),
    cell(format.money(job.cost), "num"),
    cell(format.ms(job.latency_ms), "num"),
    cell(flags(job)),
    cell(job.prompt_preview ?? "", "preview"),
  );
  return tr;
}

/** Add tiers seen in the data to the tier filter, keeping the current choice. */
export function addTierOptions(tiers) {
  const select = document.getElementById("job-tier");
  const known = new Set([...select.options].map((option) => option.value));
  for (const tier of tiers) {
    if (tier && !known.has(tier)) {
      select.append(new Option(tier, tier));
      known.add(tier);
    }
  }
}

/**
 * Load the table for the current filters. `append` adds the next page; otherwise the first rows are
 * replaced (as many as were shown, so a refresh keeps what "Load more" had added).
 */
export async function loadJobs({ append = false } = {}) {
  const sequence = ++state.sequence;
  const limit = append ? PAGE_SIZE : Math.min(MAX_PAGE_SIZE, Math.max(PAGE_SIZE, state.shown));
  const params = { ...filters(), limit, cursor: append ? state.cursor : null };
  const page = await getJson("api/jobs", params);
  // A newer load (the operator typed on) has started: its answer wins.
  if (sequence !== state.sequence) return;
  markAvailable("jobs");
  const body = document.getElementById("job-rows");
  const rows = page.jobs.map(row);
  if (append) body.append(...rows);
  else body.replaceChildren(...rows);
  state.shown = body.rows.length;
  state.cursor = page.next_cursor;
  addTierOptions(page.jobs.map((job) => job.tier));
  document.getElementById("jobs-empty").hidden = state.shown > 0;
  document.getElementById("jobs-more").hidden = !page.next_cursor;
}

async function reload(options) {
  try {
    await loadJobs(options);
  } catch (error) {
    reportError(error, () => markUnavailable("jobs", error.message));
  }
}

function fact(list, name, value) {
  const wrapper = document.createElement("div");
  const dt = document.createElement("dt");
  const dd = document.createElement("dd");
  dt.textContent = name;
  dd.textContent = value;
  wrapper.append(dt, dd);
  list.append(wrapper);
}

function fillDetail(job) {
  document.getElementById("job-detail-title").textContent = `Job ${job.job_id}`;
  const facts = document.getElementById("job-facts");
  facts.replaceChildren();
  fact(facts, "Status", job.status);
  fact(facts, "Model", job.model_used ?? "–");
  fact(facts, "Tier", job.tier ?? "–");
  const score = job.difficulty_score === null || job.difficulty_score === undefined ? "" : ` (${job.difficulty_score.toFixed(2)})`;
  fact(facts, "Difficulty", `${job.difficulty_level ?? "–"}${score}`);
  fact(facts, "Cost", format.money(job.cost));
  fact(facts, "Latency", format.ms(job.latency_ms));
  fact(facts, "Escalated", job.escalated ? `yes${job.escalation_reason ? ` (${job.escalation_reason})` : ""}` : "no");
  fact(facts, "Cached", job.cached ? "yes" : "no");
  fact(facts, "Retries", format.count(job.retry_count));
  fact(facts, "Created", format.utcTime(job.created_at));
  fact(facts, "Finished", format.utcTime(job.finished_at));
  fact(facts, "Request id", job.request_id ?? "–");

  document.getElementById("job-prompt").textContent = job.prompt ?? "";
  document.getElementById("job-response").textContent = job.response ?? "(no response)";
  document.getElementById("job-error-box").hidden = !job.error;
  document.getElementById("job-error").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  const attempts = (job.attempts || []).map((attempt, index) => {
    const tr = document.createElement("tr");
    tr.append(
      cell(String(index + 1)),
      cell(attempt.model),
      cell(attempt.tier),
      cell(attempt.purpose),
      cell(attempt.outcome),
      cell(attempt.error_class ?? ""),
      cell(attempt.status_code ?? "", "num"),
      cell(format.ms(attempt.latency_ms), "num"),
      cell(`${attempt.prompt_tokens ?? 0} / ${attempt.completion_tokens ?? 0}`, "num"),
      cell(format.money(attempt.cost), "num"),
    );
    return tr;
  });
  document.getElementById("job-attempts").replaceChildren(...attempts);
}

async function openDetail(jobId) {
  try {
    fillDetail(await getJson(`api/jobs/${encodeURIComponent(jobId)}`));
    document.getElementById("job-detail").showModal();
  } catch (error) {
    reportError(error, () => markUnavailable("jobs", `job ${jobId}: ${error.message}`));
  }
}

/**
 * Wire the filters, paging and detail dialog. `onError(error, fallback)` decides what a failed request
 * means for the page (a key prompt on 401); `fallback` shows the failure in the table's panel.
 */
export function initJobs({ onError }) {
  reportError = onError;
  let searchTimer;
  document.getElementById("job-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => reload(), SEARCH_DELAY_MS);
  });
  document.getElementById("job-status").addEventListener("change", () => reload());
  document.getElementById("job-tier").addEventListener("change", () => reload());
  document.getElementById("job-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(searchTimer);
    reload();
  });
  document.getElementById("jobs-more").addEventListener("click", () => reload({ append: true }));

  const rows = document.getElementById("job-rows");
  rows.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-job-id]");
    if (tr) openDetail(tr.dataset.jobId);
  });
  rows.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr[data-job-id]");
    if (tr && event.key === "Enter") openDetail(tr.dataset.jobId);
  });
  const dialog = document.getElementById("job-detail");
  document.getElementById("job-detail-close").addEventListener("click", () => dialog.close());
}
