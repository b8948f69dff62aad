// The console's shell: sign-in state, navigation by permission, and the page router
// (`#/<page>`). Pages are modules with `render(main)`.

import { h, set } from "./dom.js";
import { admin, can, credential, loadConfig, session, setCredential } from "./api.js";
import { renderSignIn, finishOidc } from "./signin.js";

const PAGES = [
  { id: "playground", label: "Playground", load: () => import("./playground.js"), allowed: () => true },
  { id: "keys", label: "Keys", load: () => import("./keys.js"), allowed: () => can("admin:keys:read") },
  { id: "roles", label: "Roles", load: () => import("./roles.js"), allowed: () => can("admin:roles:read") },
  { id: "audit", label: "Audit log", load: () => import("./audit.js"), allowed: () => can("admin:audit:read") },
  { id: "spend", label: "Spend", load: () => import("./spend.js"), allowed: () => can("admin:spend:read") },
  { id: "experiments", label: "Experiments", load: () => import("./experiments.js"), allowed: () => can("admin:experiments:read") },
  { id: "health", label: "Health", load: () => import("./health.js"), allowed: () => true },
];

const main = document.getElementById("main");

async function signedIn() {
  const r = await admin("GET", "/whoami");
  if (r.status === 200 && credential()) { session.me = r.body; return true; }
  // A gateway without authentication (the dev profile): no tenants, no admin API; the
  // playground and health still work, as anyone.
  if (r.status === 403 && r.body && r.body.error && r.body.error.code === "admin_disabled") {
    session.me = { anonymous: true, org: "", can: [], admin_writable: false };
    return true;
  }
  setCredential(null);
  return false;
}

function renderNav(current) {
  const nav = document.getElementById("nav");
  set(nav, PAGES.filter(p => p.allowed()).map(p =>
    h("a", { href: `#/${p.id}`, class: p.id === current ? "active" : null, "data-page": p.id }, p.label)));
  const me = session.me;
  if (me.anonymous) {
    set(document.getElementById("who"), "authentication off");
    return;
  }
  const who = me.user ? `${me.user} · ${me.org}` : `key ${me.key_id} · ${me.org}`;
  set(document.getElementById("who"), who, " ",
    h("button", { class: "secondary", type: "button", id: "signout", onclick: () => { setCredential(null); location.hash = ""; route(); } }, "Sign out"));
}

// Routes can overlap (a sign-in's and a hash change's): each takes a number and only the latest
// touches the page; an older one still rendering fills a container no longer shown.
let latest = 0;

async function route() {
  const mine = ++latest;
  const ok = await signedIn();
  if (mine !== latest) return;
  if (!ok) {
    set(document.getElementById("nav"));
    set(document.getElementById("who"));
    renderSignIn(main, route);
    return;
  }
  const id = (location.hash.match(/^#\/([a-z]+)/) || [])[1] || "playground";
  const page = PAGES.find(p => p.id === id && p.allowed()) || PAGES[0];
  const mod = await page.load();
  if (mine !== latest) return;
  renderNav(page.id);
  const view = h("div");
  set(main, view);
  await mod.render(view);
}

window.addEventListener("hashchange", route);
(async () => {
  await loadConfig();
  await finishOidc();
  await route();
})();
