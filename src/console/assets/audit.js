// The audit log: filters by actor, action, resource, outcome and time; and whether the hash
// chain verifies.

import { h, set, table, errorBox } from "./dom.js";
import { admin } from "./api.js";

export async function render(main) {
  const f = {
    actor: h("input", { id: "audit-actor" }),
    action: h("input", { id: "audit-action", placeholder: "e.g. key.create" }),
    resource: h("input", { id: "audit-resource" }),
    outcome: h("select", { id: "audit-outcome" }, ["", "succeeded", "denied", "failed"].map(o => h("option", { value: o }, o || "any"))),
    from: h("input", { id: "audit-from", type: "date" }),
    to: h("input", { id: "audit-to", type: "date" }),
  };
  const results = h("div", { id: "audit-results" });
  const chain = h("div", { id: "audit-chain" });
  const form = h("form", { id: "audit-form", class: "card" },
    h("div", { class: "row" }, Object.entries(f).map(([k, el]) => h("div", {}, h("label", { for: el.id }, k), el))),
    h("p", {}, h("button", { type: "submit", id: "audit-search" }, "Search"), " ",
      h("button", { type: "button", class: "secondary", id: "audit-verify", onclick: verify }, "Verify hash chain")));

  async function search() {
    results.dataset.state = "loading";
    const q = { limit: 200 };
    for (const [k, el] of Object.entries(f)) if (el.value) q[k] = el.value;
    // `to` names the last day shown: the API's bound is exclusive.
    if (q.to) q.to = new Date(Date.parse(`${q.to}T00:00:00Z`) + 86400000).toISOString().slice(0, 10);
    const r = await admin("GET", "/audit", undefined, q);
    results.dataset.state = "done";
    if (r.status !== 200) { set(results, errorBox(r.status, r.body)); return; }
    set(results, h("p", { class: "muted" }, `${r.body.data.length} events (from ${r.body.source})`),
      table([
        { label: "Time", value: e => new Date(e.ts_ms).toISOString() },
        { label: "Actor", value: e => e.actor },
        { label: "Action", value: e => e.action },
        { label: "Resource", value: e => e.resource },
        { label: "Outcome", value: e => e.outcome },
        { label: "Reason", value: e => e.reason || "" },
        { label: "Change", value: e => (e.before || e.after) ? h("details", {}, h("summary", {}, "before / after"),
          h("pre", {}, JSON.stringify({ before: e.before, after: e.after }, null, 2))) : "" },
      ], r.body.data, { id: "audit-table" }));
  }

  async function verify() {
    set(chain, "Verifying…");
    const r = await admin("GET", "/audit/verify");
    if (r.status !== 200) { set(chain, errorBox(r.status, r.body)); return; }
    const v = r.body;
    if (v.verified === null) set(chain, h("p", { class: "muted", "data-verified": "n/a" }, v.reason));
    else if (v.verified) set(chain, h("p", { class: "ok", "data-verified": "true" }, `Hash chain verified: ${v.rows} events in ${v.chains} chains${v.signed ? ", signatures checked" : ""}.`));
    else set(chain, h("p", { class: "error", "data-verified": "false" }, `Hash chain broken: ${v.first_break}`));
  }

  form.addEventListener("submit", ev => { ev.preventDefault(); search(); });
  set(main, h("h1", {}, "Audit log"), form, chain, results);
  await Promise.all([search(), verify()]);
}
