// Every call the console makes: the admin API on this origin and the data plane (from
// /console/config.json), each with the signed-in caller's own credential. The credential is
// kept in sessionStorage only: it ends with the browser session.

const KEY = "mb.credential";
export const session = { config: null, me: null };

export function credential() { return sessionStorage.getItem(KEY); }
export function setCredential(c) { if (c) sessionStorage.setItem(KEY, c); else sessionStorage.removeItem(KEY); }

export async function loadConfig() {
  const r = await fetch("/console/config.json", { cache: "no-store" });
  session.config = await r.json();
  return session.config;
}

export function dataPlaneUrl() {
  return session.config && session.config.data_plane_url
    ? session.config.data_plane_url
    : `${location.protocol}//${location.hostname}`;
}

async function call(url, method, body, extraHeaders = {}) {
  const headers = { ...extraHeaders };
  const c = credential();
  if (c) headers.authorization = `Bearer ${c}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let parsed = null;
  const text = await r.text();
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { raw: text }; }
  return { status: r.status, ok: r.ok, body: parsed, headers: r.headers };
}

// The admin API: `path` under /admin/v1, query from an object (empty values left out).
export function admin(method, path, body, query) {
  let url = `/admin/v1${path}`;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
    const s = q.toString();
    if (s) url += `?${s}`;
  }
  return call(url, method, body);
}

export function data(method, path, body) {
  return call(`${dataPlaneUrl()}${path}`, method, body);
}

// A data-plane request whose response is read as it arrives: `onText(delta)` per content
// delta of an SSE stream, `onEvent(obj)` per parsed event. Resolves with status, headers and
// (for an error or a non-stream answer) the body.
export async function dataStream(path, body, { onEvent, signal } = {}) {
  const headers = { "content-type": "application/json" };
  if (credential()) headers.authorization = `Bearer ${credential()}`;
  const r = await fetch(`${dataPlaneUrl()}${path}`, { method: "POST", headers, body: JSON.stringify(body), signal });
  const type = r.headers.get("content-type") || "";
  if (!r.ok || !type.includes("text/event-stream")) {
    const text = await r.text();
    let parsed; try { parsed = JSON.parse(text); } catch { parsed = { raw: text }; }
    return { status: r.status, headers: r.headers, body: parsed };
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") continue;
        try { onEvent(JSON.parse(payload)); } catch { /* a non-JSON data line is skipped */ }
      }
    }
  }
  return { status: r.status, headers: r.headers, body: null };
}

export function can(perm) {
  return !!(session.me && session.me.can && session.me.can.includes(perm));
}
