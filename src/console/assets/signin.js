// Sign-in: a virtual key, or the configured OIDC identity provider (authorization code flow
// with PKCE, as a public client: no client secret). The token or key is kept for this browser
// session only.

import { h, set } from "./dom.js";
import { session, setCredential } from "./api.js";

export function renderSignIn(main, done) {
  const key = h("input", { type: "password", id: "signin-key", autocomplete: "off", placeholder: "mbk_…" });
  const msg = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "signin card", id: "signin" },
    h("h1", {}, "Sign in"),
    h("label", { for: "signin-key" }, "Virtual key"),
    key,
    h("p", {}, h("button", { type: "submit", id: "signin-submit" }, "Sign in with key")),
    msg);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    setCredential(key.value.trim());
    await done();
    if (document.getElementById("signin")) set(msg, "That key was not accepted.");
  });
  const oidc = session.config && session.config.oidc;
  if (oidc) {
    form.append(h("hr"), h("button", { type: "button", class: "secondary", id: "signin-sso", onclick: () => startOidc(oidc) }, "Sign in with SSO"));
  }
  set(main, form);
}

function b64url(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function random(n) { const a = new Uint8Array(n); crypto.getRandomValues(a); return b64url(a); }

async function discover(issuer) {
  const r = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!r.ok) throw new Error(`discovery answered ${r.status}`);
  return r.json();
}

function redirectUri() { return `${location.origin}/console/`; }

async function startOidc(oidc) {
  const d = await discover(oidc.issuer);
  const verifier = random(32);
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = random(16);
  sessionStorage.setItem("mb.oidc", JSON.stringify({ verifier, state, token_endpoint: d.token_endpoint }));
  const q = new URLSearchParams({
    response_type: "code", client_id: oidc.client_id, redirect_uri: redirectUri(),
    scope: oidc.scopes, state, code_challenge: challenge, code_challenge_method: "S256",
  });
  location.assign(`${d.authorization_endpoint}?${q}`);
}

// Back from the identity provider with `?code=…&state=…`: trade the code for tokens.
export async function finishOidc() {
  const q = new URLSearchParams(location.search);
  const pending = sessionStorage.getItem("mb.oidc");
  if (!q.get("code") || !pending) return;
  sessionStorage.removeItem("mb.oidc");
  history.replaceState(null, "", "/console/");
  const p = JSON.parse(pending);
  if (q.get("state") !== p.state) return;
  const oidc = session.config.oidc;
  const body = new URLSearchParams({
    grant_type: "authorization_code", code: q.get("code"), redirect_uri: redirectUri(),
    client_id: oidc.client_id, code_verifier: p.verifier,
  });
  const r = await fetch(p.token_endpoint, { method: "POST", body });
  if (!r.ok) return;
  const t = await r.json();
  // The gateway verifies SSO JWTs: the access token when it is one, else the ID token.
  const jwt = s => typeof s === "string" && s.split(".").length === 3;
  setCredential(jwt(t.access_token) ? t.access_token : t.id_token);
}
