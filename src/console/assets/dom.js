// Element building without HTML parsing: every piece of text becomes a text node, so whatever a
// user, a key name or an audit field holds renders as text, never as markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else if (k === "href" && !/^(#|\/|https?:)/.test(String(v))) continue;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Replaces an element's content.
export function set(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// An SVG element (charts).
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A table from column specs [{label, value: row => text|Node, num}] and rows.
export function table(columns, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map(c => h("th", { class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.map(r => h("tr", {}, columns.map(c => h("td", { class: c.num ? "num" : null }, c.value(r)))))));
}

// An OpenAI-shaped error as the page shows it: status, code and message, and the whole body.
export function errorBox(status, body) {
  const e = body && body.error ? body.error : null;
  return h("div", { class: "error", role: "alert", "data-testid": "error" },
    h("p", {}, `HTTP ${status}`, e ? ` · ${e.code || e.type}: ${e.message}` : ""),
    h("pre", {}, JSON.stringify(body, null, 2)));
}

export function copyButton(text, label = "Copy") {
  const b = h("button", { class: "secondary", type: "button" }, label);
  b.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(typeof text === "function" ? text() : text); b.textContent = "Copied"; }
    catch { b.textContent = "Select and copy"; }
  });
  return b;
}

export function usd(nano) {
  if (nano === null || nano === undefined) return "—";
  const n = BigInt(nano), neg = n < 0n, a = neg ? -n : n;
  const whole = a / 1000000000n, frac = (a % 1000000000n).toString().padStart(9, "0");
  return `${neg ? "-" : ""}$${whole}.${frac}`;
}
