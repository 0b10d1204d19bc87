// The UI's API: /ui/api/<admin route> answers as the admin API does, with the session cookie;
// every change (non-GET) carries the CSRF token from GET /ui/api/session.

const BASE = "/ui/api";
let csrf = null;

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function toLogin() {
  window.location.assign("/ui/login?error=expired");
}

/** The session (and its CSRF token); to the login page without one. */
export async function loadSession() {
  const response = await fetch(BASE + "/session", { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    toLogin();
    throw new ApiError(response.status, "not logged in");
  }
  const body = await response.json();
  csrf = body.csrf_token ?? body.csrf ?? null;
  return body;
}

/** "/budgets/a b" -> "/budgets/a%20b": ids may hold anything. */
export function path(strings, ...values) {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? encodeURIComponent(values[i]) : ""), "");
}

/** A query string of the set values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

export async function api(method, route, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    if (csrf === null) await loadSession();
    headers["X-CSRF-Token"] = csrf;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(BASE + route, {
    method,
    headers,
    credentials: "same-origin",
    cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    toLogin();
    throw new ApiError(401, "the session ended: log in again");
  }
  let data = null;
  const text = await response.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data?.error?.message || `${method} ${route}: HTTP ${response.status}`;
    throw new ApiError(response.status, message, data);
  }
  return data;
}

/** POST /ui/logout with the CSRF token; the login page either way. */
export async function logout() {
  try {
    if (csrf === null) await loadSession();
    await fetch("/ui/logout", { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
  } finally {
    window.location.assign("/ui/login");
  }
}

export const get = (route) => api("GET", route);
export const post = (route, body) => api("POST", route, body ?? {});
export const patch = (route, body) => api("PATCH", route, body);
export const del = (route) => api("DELETE", route);
