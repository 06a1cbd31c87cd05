// How numbers, money and times read on the page.

export function money(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "$0.00";
  // Router costs are often fractions of a cent: keep enough digits to tell them apart.
  const digits = Math.abs(value) >= 0.1 ? 2 : Math.abs(value) >= 0.001 ? 4 : 6;
  return `${value < 0 ? "-" : ""}$${Math.abs(value).toFixed(digits)}`;
}

export function percent(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(1)} %`;
}

export function ms(value) {
  return value === null || value === undefined ? "–" : `${Math.round(value)} ms`;
}

export function count(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en");
}

/** "2026-11-26 10:02:03" in UTC, the zone the budget and reports use. */
export function utcTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toISOString().replace("T", " ").slice(0, 19);
}

export function clockTime(date) {
  return date.toISOString().slice(11, 19);
}
