// Health: readiness, providers and their circuit breakers, the sinks and their spools, the
// control store and the config generation.

import { h, set, table, errorBox } from "./dom.js";
import { admin, can } from "./api.js";

export async function render(main) {
  const ready = await fetch("/readyz").then(async r => ({ status: r.status, body: await r.json() })).catch(() => null);
  const parts = [h("h1", {}, "Health")];
  if (ready) {
    parts.push(h("p", { id: "health-ready", class: ready.body.ready ? "ok" : "error" },
      ready.body.ready ? "Ready" : "Not ready", ready.body.draining ? " (draining)" : "",
      ` · config generation ${ready.body.config_generation} · ${ready.body.models} models · ${ready.body.providers} providers`));
  }
  if (can("admin:status:read")) {
    const s = await admin("GET", "/status");
    if (s.status !== 200) parts.push(errorBox(s.status, s.body));
    else {
      const v = s.body;
      parts.push(h("h2", {}, "Providers"), table([
        { label: "Provider", value: p => p.name }, { label: "Base URL", value: p => p.base_url },
      ], v.providers, { id: "health-providers" }));
      parts.push(h("h2", {}, "Circuit breakers"), v.breakers.length ? table([
        { label: "Provider", value: b => b.provider }, { label: "Model", value: b => b.model },
        { label: "State", value: b => h("span", { class: b.state === "closed" ? "ok" : "error" }, b.state) },
      ], v.breakers, { id: "health-breakers" }) : h("p", { class: "muted" }, "No target has served traffic yet."));
      const sink = (name, x) => [h("dt", {}, name), h("dd", {}, `${x.kind}${x.queue_depth !== undefined ? ` · queue ${x.queue_depth}` : ""}${x.backed_up ? " · BACKED UP" : ""}${x.warehouse ? ` · ClickHouse ${x.warehouse.clickhouse_up ? "up" : "DOWN"} · spool ${x.warehouse.spool_bytes} / ${x.warehouse.spool_limit_bytes} bytes in ${x.warehouse.spool_segments} segments` : ""}`)];
      parts.push(h("h2", {}, "Sinks and stores"), h("dl", { class: "meta", id: "health-sinks" },
        sink("Usage", v.usage_sink), sink("Audit", v.audit_sink),
        h("dt", {}, "Control store"), h("dd", {}, v.control_store ? `${v.control_store.store} · ${v.control_store.up ? "up" : "DOWN (serving the last snapshot)"}` : "none"),
        h("dt", {}, "Config generation"), h("dd", {}, String(v.config_generation))));
    }
  }
  set(main, parts);
}
