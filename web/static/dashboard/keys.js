// The API keys panel: every key with its limits, a form to create one (its secret shown once), and revoke.

import { sendJson } from "./api.js";
import * as format from "./format.js";
import { cell } from "./table.js";

function row(key) {
  const tr = document.createElement("tr");
  tr.dataset.keyId = key.id;
  tr.className = `key-${key.status}`;
  const models = key.allowed_models ? key.allowed_models.join(", ") : "any";
  const windows = key.budget_windows
    ? Object.entries(key.budget_windows).map(([window, limit]) => `${window} ${format.money(limit)}`).join(" · ")
    : "–";
  tr.append(
    cell(key.name),
    cell(key.prefix, "mono"),
    cell(key.is_admin ? "admin" : ""),
    cell(key.status),
    cell(key.monthly_budget === null ? "global" : format.money(key.monthly_budget), "num"),
    cell(key.rpm === null ? "default" : format.count(key.rpm), "num"),
    cell(key.tpm === null ? "–" : format.count(key.tpm), "num"),
    cell(windows),
    cell(models),
    cell(key.expires_at ? format.utcTime(key.expires_at) : "never"),
  );
  const actions = document.createElement("td");
  if (key.status !== "revoked") {
    const revoke = document.createElement("button");
    revoke.type = "button";
    revoke.className = "revoke";
    revoke.textContent = "Revoke";
    revoke.dataset.keyId = key.id;
    revoke.dataset.keyName = key.name;
    actions.append(revoke);
  }
  tr.append(actions);
  return tr;
}

export function renderKeys(answer) {
  document.getElementById("key-rows").replaceChildren(...answer.keys.map(row));
}

function numberOrNull(id) {
  const value = document.getElementById(id).value.trim();
  return value === "" ? null : Number(value);
}

function showNote(text, isError) {
  const note = document.getElementById("key-create-note");
  note.hidden = false;
  note.classList.toggle("error", isError);
  note.textContent = text;
}

/** Wire the create form and the revoke buttons; `onChange` reloads the panels after a change. */
export function initKeys({ onChange, onError }) {
  document.getElementById("key-create").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: document.getElementById("key-name").value.trim() };
    for (const [field, id] of [
      ["monthly_budget", "key-budget"],
      ["rpm", "key-rpm"],
      ["tpm", "key-tpm"],
    ]) {
      const value = numberOrNull(id);
      if (value !== null) body[field] = value;
    }
    const daily = numberOrNull("key-daily");
    if (daily !== null) body.budget_windows = { day: daily };
    try {
      const created = await sendJson("POST", "api/keys", body);
      event.target.reset();
      // The secret exists nowhere else: it is shown here once and never again.
      document.getElementById("key-secret").textContent = created.key;
      showNote(`Created ${created.name}. Copy its key now, it is not shown again:`, false);
      document.getElementById("key-secret").hidden = false;
      onChange();
    } catch (error) {
      onError(error, () => showNote(error.message, true));
    }
  });
  document.getElementById("key-rows").addEventListener("click", async (event) => {
    const button = event.target.closest("button.revoke");
    if (!button || !window.confirm(`Revoke the key ${button.dataset.keyName}? Requests with it are refused at once.`)) {
      return;
    }
    try {
      await sendJson("DELETE", `api/keys/${button.dataset.keyId}`);
      onChange();
    } catch (error) {
      onError(error, () => showNote(error.message, true));
    }
  });
}
