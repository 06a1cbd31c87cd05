// The summary panels (budget, savings, outcomes, circuits) and each panel's "unavailable" state.

import * as format from "./format.js";

function panel(name) {
  return document.querySelector(`[data-panel="${name}"]`);
}

function setField(panelName, field, text) {
  panel(panelName).querySelector(`[data-field="${field}"]`).textContent = text;
}

/** Show the panel's content again after an earlier failure. */
export function markAvailable(name) {
  const section = panel(name);
  section.classList.remove("is-unavailable");
  section.querySelector(".unavailable")?.remove();
  section.querySelector(".panel-body").hidden = false;
}

/** Replace the panel's content with why it cannot be shown; the rest of the page carries on. */
export function markUnavailable(name, reason) {
  const section = panel(name);
  section.classList.add("is-unavailable");
  section.querySelector(".panel-body").hidden = true;
  let note = section.querySelector(".unavailable");
  if (!note) {
    note = document.createElement("p");
    note.className = "unavailable";
    section.querySelector("h2").after(note);
  }
  note.textContent = `Unavailable: ${reason}`;
}

export function renderBudget(budget) {
  setField("budget", "spent", format.money(budget.total_spent));
  setField("budget", "limit", format.money(budget.monthly_limit));
  setField("budget", "reserved", format.money(budget.reserved));
  setField("budget", "percentage", format.percent(budget.percentage_used));
  setField("budget", "scope", budget.scope === "global" ? "global budget" : `budget of ${budget.scope}`);
  const fill = panel("budget").querySelector('[data-field="meter"]');
  fill.style.width = `${Math.min(100, budget.percentage_used)}%`;
  fill.classList.toggle("over", budget.percentage_used >= 80);
}

export function renderSavings(stats) {
  setField("savings", "savings", format.money(stats.savings));
  // Routing can cost more than the strongest tier (a forced or escalated pricier model): say so in red.
  panel("savings").querySelector(".big").classList.toggle("negative", stats.savings < 0);
  setField("savings", "savings-pct", format.percent(stats.savings_pct));
  setField("savings", "cost", format.money(stats.total_cost));
  setField("savings", "baseline", format.money(stats.baseline_cost));
}

export function renderOutcomes(stats) {
  const finished = stats.successful_requests + stats.failed_requests;
  setField("outcomes", "success-rate", format.percent(stats.success_rate));
  setField("outcomes", "escalation-rate", format.percent(stats.escalation_rate));
  setField("outcomes", "failure-rate", format.percent(finished ? (stats.failed_requests * 100) / finished : 0));
  setField("outcomes", "requests", format.count(stats.total_requests));
  setField("outcomes", "cache-hits", format.count(stats.cache_hits));
}

export function renderCircuits(health) {
  const circuits = health.checks.circuits || {};
  const notClosed = Object.entries(circuits).filter(([, state]) => state !== "closed");
  setField("circuits", "open-count", notClosed.length ? `${notClosed.length} not closed` : "All closed");
  const list = panel("circuits").querySelector('[data-field="circuit-list"]');
  list.replaceChildren(
    ...Object.entries(circuits).map(([model, state]) => {
      const item = document.createElement("li");
      item.className = `circuit circuit-${state}`;
      item.textContent = `${model}: ${state.replace("_", "-")}`;
      return item;
    }),
  );
  const { database, broker, workers } = health.checks;
  setField("circuits", "system", `database ${database} · broker ${broker} · ${workers} worker(s)`);
}
