// The playground: a chat request built from a form, sent to the data plane as the signed-in
// caller; tokens render as they arrive; then where it went, its usage, cost and timing, and
// code that reproduces it.

import { h, set, errorBox, copyButton } from "./dom.js";
import { admin, data, dataStream, dataPlaneUrl } from "./api.js";
import * as snippets from "./snippets.js";

export async function render(main) {
  const models = await data("GET", "/v1/models");
  const ids = models.status === 200 ? models.body.data.map(m => m.id).sort() : [];
  const model = h("select", { id: "pg-model" }, ids.map(id => h("option", { value: id }, id)));
  const system = h("textarea", { id: "pg-system", placeholder: "System message (optional)" });
  const user = h("textarea", { id: "pg-user", placeholder: "User message" }, "Say hello.");
  const temperature = h("input", { id: "pg-temperature", type: "number", step: "0.1", min: "0", max: "2", placeholder: "default" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: "1", placeholder: "default" });
  const stream = h("input", { id: "pg-stream", type: "checkbox", checked: true });
  const send = h("button", { id: "pg-send", type: "submit" }, "Send");
  const output = h("pre", { id: "pg-output", class: "output", "aria-live": "polite" });
  const meta = h("dl", { id: "pg-meta", class: "meta" });
  const status = h("p", { id: "pg-status", class: "muted" });
  const code = h("div", { id: "pg-snippets" });

  const body = () => {
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    messages.push({ role: "user", content: user.value });
    const b = { model: model.value, messages };
    if (temperature.value !== "") b.temperature = Number(temperature.value);
    if (maxTokens.value !== "") b.max_tokens = Number(maxTokens.value);
    if (stream.checked) { b.stream = true; b.stream_options = { include_usage: true }; }
    return b;
  };

  const showSnippets = () => {
    const b = body(), base = dataPlaneUrl();
    const langs = [["curl", snippets.curl], ["python", snippets.python], ["node", snippets.node]];
    const panes = langs.map(([name, make]) => {
      const text = make(base, b);
      return h("div", { class: "card" }, h("div", { class: "row" }, h("strong", {}, name), h("span", { class: "narrow" }, copyButton(text))),
        h("pre", { id: `snippet-${name}` }, text));
    });
    set(code, h("h2", {}, "Reproduce this request"), panes);
  };
  for (const el of [model, system, user, temperature, maxTokens, stream]) el.addEventListener("input", showSnippets);

  const form = h("form", { id: "pg-form" },
    h("div", { class: "row" },
      h("div", {}, h("label", { for: "pg-model" }, "Model"), model),
      h("div", { class: "narrow" }, h("label", { for: "pg-temperature" }, "Temperature"), temperature),
      h("div", { class: "narrow" }, h("label", { for: "pg-max-tokens" }, "Max tokens"), maxTokens),
      h("div", { class: "narrow" }, h("label", { for: "pg-stream" }, "Stream"), stream)),
    h("label", { for: "pg-system" }, "System"), system,
    h("label", { for: "pg-user" }, "User"), user,
    h("p", {}, send));

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    send.disabled = true;
    set(output); set(meta); set(status, "Sending…");
    const b = body();
    const started = performance.now();
    let ttft = null, usage = null, result;
    try {
      if (b.stream) {
        result = await dataStream("/v1/chat/completions", b, {
          onEvent: ev => {
            const delta = ev.choices && ev.choices[0] && ev.choices[0].delta && ev.choices[0].delta.content;
            if (delta) {
              if (ttft === null) ttft = performance.now() - started;
              output.append(document.createTextNode(delta));
            }
            if (ev.usage) usage = ev.usage;
          },
        });
      } else {
        result = await data("POST", "/v1/chat/completions", b);
        if (result.status === 200) {
          output.textContent = result.body.choices[0].message.content || "";
          usage = result.body.usage;
        }
      }
    } catch (e) {
      set(status, h("span", { class: "error" }, `Request failed: ${e.message}`));
      send.disabled = false;
      return;
    }
    const elapsed = performance.now() - started;
    const rid = result.headers.get("x-request-id");
    if (result.status !== 200 || result.body && result.body.error) {
      set(status, errorBox(result.status, result.body));
    } else {
      set(status, h("span", { class: "ok", id: "pg-done" }, "Done"));
    }
    const rows = [
      ["Request id", rid], ["Status", result.status],
      ["Provider", result.headers.get("x-model-bridge-provider") || "—"],
      ["Variant", result.headers.get("x-model-bridge-variant") || "—"],
      ["Latency (browser)", `${elapsed.toFixed(0)} ms`],
      ["TTFT (browser)", ttft === null ? "—" : `${ttft.toFixed(0)} ms`],
      ["Usage", usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion = ${usage.total_tokens} tokens` : "—"],
    ];
    set(meta, rows.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, String(v))]));
    send.disabled = false;
    if (rid) showReceipt(meta, rid);
  });

  set(main, h("h1", {}, "Playground"),
    ids.length ? null : errorBox(models.status, models.body),
    h("div", { class: "grid2" }, h("div", {}, form), h("div", {}, h("h2", {}, "Response"), output, status, meta)),
    code);
  showSnippets();
}

// The gateway's own record of the request (cost, route, timing): written when the response
// ends, so asked for a few times.
async function showReceipt(meta, rid) {
  for (let i = 0; i < 30; i++) {
    const r = await admin("GET", `/requests/${encodeURIComponent(rid)}`);
    if (r.status === 200) {
      const x = r.body;
      const add = (k, v) => meta.append(h("dt", {}, k), h("dd", { "data-field": k }, v));
      add("Cost", x.cost_usd === null ? "unpriced" : `$${x.cost_usd}`);
      add("Latency (gateway)", `${x.latency_ms.toFixed(1)} ms`);
      add("TTFT (gateway)", x.ttft_ms === null ? "—" : `${x.ttft_ms.toFixed(1)} ms`);
      add("Provider model", x.provider_model || "—");
      return;
    }
    if (r.status !== 404) return;
    await new Promise(res => setTimeout(res, 100));
  }
}
