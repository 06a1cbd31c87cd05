// Building the panels' table rows.

/** A table cell showing `text` (as text, never as markup), with an optional class. */
export function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}
