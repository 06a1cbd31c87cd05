// The dashboard's charts (Chart.js, vendored in static/vendor/chartjs). Each chart is created once and
// its data replaced on every refresh, so a refresh does not flicker or rebuild the canvas.

const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
const BUDGET_COLOR = "#dc2626";
const DAY_MS = 24 * 60 * 60 * 1000;

function draw(canvasId, type, data, options = {}) {
  const existing = Chart.getChart(canvasId);
  if (existing) {
    existing.data = data;
    existing.update("none");
    return existing;
  }
  return new Chart(document.getElementById(canvasId), {
    type,
    data,
    options: { animation: false, maintainAspectRatio: false, responsive: true, ...options },
  });
}

function isoDay(time) {
  return new Date(time).toISOString().slice(0, 10);
}

/** Every UTC day of the report's period [since, until), so quiet days show as zero. */
function periodDays(report) {
  const days = new Set(report.by_day.map((row) => row.date.slice(0, 10)));
  const until = Date.parse(report.until.slice(0, 10));
  for (let day = Date.parse(report.since.slice(0, 10)); day < until; day += DAY_MS) days.add(isoDay(day));
  return [...days].sort();
}

function byDate(report) {
  return new Map(report.by_day.map((row) => [row.date.slice(0, 10), row]));
}

/** Cumulative spend over the month with the monthly limit as a flat line. */
export function drawSpendMonth(report, budget) {
  const days = periodDays(report);
  const rows = byDate(report);
  const today = isoDay(Date.now());
  let total = 0;
  // The line stops at today; the budget line runs to the end of the month.
  const cumulative = days.map((day) => (day > today ? null : (total += rows.has(day) ? rows.get(day).cost : 0)));
  const datasets = [
    {
      label: "Spent (cumulative)",
      data: cumulative,
      borderColor: PALETTE[0],
      backgroundColor: "#2563eb33",
      fill: true,
      pointRadius: 2,
    },
  ];
  if (budget) {
    datasets.push({
      label: "Monthly budget",
      data: days.map(() => budget.monthly_limit),
      borderColor: BUDGET_COLOR,
      borderDash: [6, 4],
      pointRadius: 0,
    });
  }
  draw("chart-spend-month", "line", { labels: days, datasets }, { scales: { y: { beginAtZero: true } } });
}

/** Spend per day beside what the strongest tier would have cost. */
export function drawSpendPerDay(report) {
  const days = periodDays(report);
  const rows = byDate(report);
  const value = (field) => days.map((day) => (rows.has(day) ? rows.get(day)[field] : 0));
  draw(
    "chart-spend-day",
    "bar",
    {
      labels: days,
      datasets: [
        { label: "Spent", data: value("cost"), backgroundColor: PALETTE[0] },
        { label: "Strongest tier", data: value("baseline_cost"), backgroundColor: "#94a3b8" },
      ],
    },
    { scales: { y: { beginAtZero: true } } },
  );
}

function drawMix(canvasId, labels, values) {
  draw(canvasId, "doughnut", {
    labels,
    datasets: [{ data: values, backgroundColor: labels.map((_, index) => PALETTE[index % PALETTE.length]) }],
  });
}

export function drawModelMix(stats) {
  const models = Object.keys(stats.by_model);
  drawMix("chart-model-mix", models, models.map((model) => stats.by_model[model].requests));
}

export function drawTierMix(report) {
  drawMix(
    "chart-tier-mix",
    report.by_tier.map((row) => row.tier),
    report.by_tier.map((row) => row.requests),
  );
}

export function drawLatency(stats) {
  const latency = stats.latency_ms || {};
  draw(
    "chart-latency",
    "bar",
    {
      labels: ["p50", "p95", "p99"],
      datasets: [
        { label: "ms", data: [latency.p50, latency.p95, latency.p99], backgroundColor: [PALETTE[1], PALETTE[2], PALETTE[3]] },
      ],
    },
    { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, title: { display: true, text: "ms" } } } },
  );
}
