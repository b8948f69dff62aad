// Keys of the caller's org: list (paged), create (the secret is shown once, with a copy
// button), revoke, rotate. Write controls only for callers holding admin:keys:write.

import { h, set, table, errorBox, copyButton } from "./dom.js";
import { admin, can, session } from "./api.js";

const when = s => (s ? new Date(s * 1000).toISOString().replace(".000Z", "Z") : "—");

export async function render(main) {
  const org = session.me.org;
  const write = can("admin:keys:write") && session.me.admin_writable;
  const list = h("div", { id: "keys-list" });
  const secret = h("div", { id: "keys-secret" });
  const msg = h("div", { id: "keys-msg" });

  const showSecret = (title, body) => {
    const key = body.key;
    const box = h("div", { class: "secret", role: "status" },
      h("p", {}, h("strong", {}, title), " — copy it now: it is shown only this once."),
      h("pre", { id: "keys-secret-value" }, key),
      h("div", { class: "row" }, h("span", { class: "narrow" }, copyButton(key)),
        h("span", { class: "narrow" }, h("button", { type: "button", class: "secondary", id: "keys-secret-done", onclick: () => set(secret) }, "Done"))));
    set(secret, box);
  };

  let after = null, rows = [];
  const load = async (more) => {
    const r = await admin("GET", `/orgs/${encodeURIComponent(org)}/keys`, undefined, { limit: 50, after: more ? after : null });
    if (r.status !== 200) { set(list, errorBox(r.status, r.body)); return; }
    rows = more ? rows.concat(r.body.data) : r.body.data;
    after = r.body.last_id;
    const cols = [
      { label: "Id", value: k => h("code", {}, k.id) },
      { label: "Name", value: k => k.name || "" },
      { label: "User", value: k => k.user || "" },
      { label: "Roles", value: k => (k.roles || []).map(x => h("span", { class: "tag" }, x)) },
      { label: "Cost center", value: k => k.cost_center || "" },
      { label: "Created", value: k => when(k.created_at) },
      { label: "Expires", value: k => when(k.expires_at) },
      { label: "State", value: k => (k.revoked_at ? "revoked" : k.active ? "active" : "expired") },
    ];
    if (write) cols.push({ label: "", value: k => (k.managed_by !== "store" || k.revoked_at) ? "" : [
      h("button", { type: "button", class: "danger", "data-action": "revoke", "data-key": k.id, onclick: () => act(k, "revoke") }, "Revoke"), " ",
      h("button", { type: "button", class: "secondary", "data-action": "rotate", "data-key": k.id, onclick: () => act(k, "rotate") }, "Rotate"),
    ] });
    set(list, table(cols, rows, { id: "keys-table" }),
      r.body.has_more ? h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "More") : null);
  };

  const act = async (k, action) => {
    if (action === "revoke" && !confirm(`Revoke key ${k.id}? Requests with it are refused at once.`)) return;
    const r = await admin("POST", `/orgs/${encodeURIComponent(org)}/keys/${encodeURIComponent(k.id)}/${action}`);
    if (r.status >= 300) { set(msg, errorBox(r.status, r.body)); return; }
    set(msg);
    if (action === "rotate") showSecret(`New key ${r.body.id} (replaces ${k.id})`, r.body);
    await load(false);
  };

  let form = null;
  if (write) {
    const name = h("input", { id: "key-name" });
    const roles = h("input", { id: "key-roles", placeholder: "developer, …" });
    const user = h("input", { id: "key-user" });
    const cc = h("input", { id: "key-cost-center" });
    const expires = h("input", { id: "key-expires", type: "date" });
    form = h("form", { id: "key-form", class: "card" }, h("h2", {}, "New key"),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "key-name" }, "Name"), name),
        h("div", {}, h("label", { for: "key-roles" }, "Roles (comma-separated)"), roles),
        h("div", {}, h("label", { for: "key-user" }, "For user (optional)"), user),
        h("div", {}, h("label", { for: "key-cost-center" }, "Cost center (optional)"), cc),
        h("div", {}, h("label", { for: "key-expires" }, "Expires (optional)"), expires)),
      h("p", {}, h("button", { type: "submit", id: "key-create" }, "Create key")));
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const spec = { roles: roles.value.split(",").map(s => s.trim()).filter(Boolean) };
      if (name.value.trim()) spec.name = name.value.trim();
      if (user.value.trim()) spec.user = user.value.trim();
      if (cc.value.trim()) spec.cost_center = cc.value.trim();
      if (expires.value) spec.expires_at = `${expires.value}T00:00:00Z`;
      const r = await admin("POST", `/orgs/${encodeURIComponent(org)}/keys`, spec);
      if (r.status !== 201) { set(msg, errorBox(r.status, r.body)); return; }
      set(msg);
      form.reset();
      showSecret(`Key ${r.body.id} created`, r.body);
      await load(false);
    });
  }
  set(main, h("h1", {}, `Keys of ${org}`), form, secret, msg, list);
  await load(false);
}
