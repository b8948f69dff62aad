// Roles and what they grant (inheritance expanded), the bindings in force, and a user's role
// assignments: assign with an expiry, remove — where the control plane allows writes.

import { h, set, table, errorBox } from "./dom.js";
import { admin, can, session } from "./api.js";

export async function render(main) {
  const org = session.me.org;
  const write = can("admin:bindings:write") && session.me.admin_writable;
  const [roles, bindings] = await Promise.all([
    admin("GET", "/roles", undefined, { limit: 100 }),
    can("admin:bindings:read") ? admin("GET", "/bindings", undefined, { limit: 100 }) : null,
  ]);
  const roleTable = roles.status === 200 ? table([
    { label: "Role", value: r => h("strong", {}, r.id) },
    { label: "Description", value: r => r.description || "" },
    { label: "Inherits", value: r => (r.inherits || []).map(x => h("span", { class: "tag" }, x)) },
    { label: "Effective permissions", value: r => (r.effective || []).map(x => h("span", { class: "tag" }, x)) },
    { label: "Managed by", value: r => r.managed_by },
  ], roles.body.data, { id: "roles-table" }) : errorBox(roles.status, roles.body);

  const bindingTable = !bindings ? null : bindings.status === 200 ? table([
    { label: "Subject", value: b => b.subject },
    { label: "Roles", value: b => (b.roles || []).map(x => h("span", { class: "tag" }, x)) },
    { label: "Org", value: b => b.org || "any" },
    { label: "Expires", value: b => b.expires_at ? new Date(b.expires_at * 1000).toISOString() : "—" },
    { label: "Managed by", value: b => b.managed_by },
  ], bindings.body.data, { id: "bindings-table" }) : errorBox(bindings.status, bindings.body);

  // One user's assignments.
  const userInput = h("input", { id: "assign-user", placeholder: "user id (e.g. alice@example.com)" });
  const userView = h("div", { id: "assign-view" });
  const msg = h("div", { id: "assign-msg" });
  const roleNames = roles.status === 200 ? roles.body.data.map(r => r.id.startsWith(`${org}:`) ? r.id.slice(org.length + 1) : r.id).filter(n => !n.includes(":")) : [];
  const roleSelect = h("select", { id: "assign-role" }, roleNames.map(n => h("option", { value: n }, n)));
  const expires = h("input", { id: "assign-expires", type: "datetime-local" });

  const path = u => `/orgs/${encodeURIComponent(org)}/users/${encodeURIComponent(u)}/roles`;
  const showUser = async () => {
    const u = userInput.value.trim();
    if (!u) return;
    const r = await admin("GET", path(u));
    if (r.status !== 200) { set(userView, errorBox(r.status, r.body)); return; }
    set(userView, h("p", {}, "Holds now: ", r.body.roles.length ? r.body.roles.map(x => h("span", { class: "tag" }, x)) : "no role"),
      table([
        { label: "Roles", value: a => a.roles.map(x => h("span", { class: "tag" }, x)) },
        { label: "Expires", value: a => a.expires_at || "never" },
        { label: "In force", value: a => (a.active ? "yes" : "expired") },
        { label: "Managed by", value: a => a.managed_by },
        { label: "", value: a => (write && a.managed_by === "api") ? a.roles.map(role =>
          h("button", { type: "button", class: "danger", "data-action": "unassign", "data-role": role, onclick: async () => {
            const short = role.startsWith(`${org}:`) ? role.slice(org.length + 1) : role;
            const d = await admin("DELETE", `${path(u)}/${encodeURIComponent(short)}`);
            if (d.status !== 200) set(msg, errorBox(d.status, d.body)); else { set(msg); await showUser(); }
          } }, `Remove ${role}`)) : "" },
      ], r.body.assignments, { id: "assign-table" }));
  };

  const lookup = h("form", { id: "assign-lookup", class: "card" }, h("h2", {}, "A user's roles"),
    h("div", { class: "row" }, h("div", {}, h("label", { for: "assign-user" }, "User"), userInput),
      h("div", { class: "narrow" }, h("button", { type: "submit", class: "secondary" }, "Show"))),
    write ? h("div", { class: "row", id: "assign-controls" },
      h("div", {}, h("label", { for: "assign-role" }, "Role"), roleSelect),
      h("div", {}, h("label", { for: "assign-expires" }, "Expires (UTC, optional)"), expires),
      h("div", { class: "narrow" }, h("button", { type: "button", id: "assign-submit", onclick: async () => {
        const u = userInput.value.trim();
        if (!u) return;
        const body = { roles: [roleSelect.value] };
        if (expires.value) body.expires_at = `${expires.value.length === 16 ? expires.value + ":00" : expires.value}Z`;
        const r = await admin("POST", path(u), body);
        if (r.status !== 201) set(msg, errorBox(r.status, r.body)); else { set(msg); await showUser(); }
      } }, "Assign"))) : null,
    msg, userView);
  lookup.addEventListener("submit", ev => { ev.preventDefault(); showUser(); });

  set(main, h("h1", {}, "Roles and bindings"), lookup,
    h("h2", {}, "Roles"), roleTable,
    bindingTable ? [h("h2", {}, "Bindings"), bindingTable] : null);
}
