// Reads (and, for the keys panel, writes) the router's JSON API, sending the operator's key when one was entered.

const KEY_STORAGE = "model-router.api-key";

/** The API answered 401: the page needs a (different) key. */
export class AuthRequired extends Error {}

/** The API answered another error status, or did not answer. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
}

/**
 * GET an /api path (relative to the page) with query `params`; empty params are left out.
 * `okStatuses` lists error statuses whose JSON body is still the answer (health answers 503 with its checks).
 */
export async function getJson(path, params = {}, { okStatuses = [] } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store" });
  } catch (error) {
    throw new ApiError(0, `no answer from the server (${error.message})`);
  }
  if (response.status === 401) throw new AuthRequired(key ? "the key was refused" : "a key is required");
  const body = await response.json().catch(() => null);
  if (!response.ok && !okStatuses.includes(response.status)) {
    // The first sentence is enough for a panel (404s carry a paragraph of advice).
    const message = body && body.error && body.error.message ? body.error.message.split(". ")[0] : response.statusText;
    throw new ApiError(response.status, `${response.status} ${message}`);
  }
  return body;
}

/** Send `body` (if any) as JSON with `method` to an /api path; answer the JSON body, or throw as getJson does. */
export async function sendJson(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = storedKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, `no answer from the server (${error.message})`);
  }
  if (response.status === 401) throw new AuthRequired(key ? "the key was refused" : "a key is required");
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const message = answer && answer.error && answer.error.message ? answer.error.message : response.statusText;
    throw new ApiError(response.status, `${response.status} ${message}`);
  }
  return answer;
}
