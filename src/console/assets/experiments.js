// Experiments: per variant, the report's requests, error rate, latency, cost and score, with
// the tests against the control (difference, its 95% confidence interval, statistic, p-value)
// and the verdict.

import { h, set, table, errorBox } from "./dom.js";
import { admin } from "./api.js";

const fmt = (v, digits = 4) => (v === null || v === undefined ? "—" : typeof v === "number" ? Number(v.toPrecision(digits)).toString() : String(v));

export async function render(main) {
  const list = await admin("GET", "/experiments");
  if (list.status !== 200) { set(main, h("h1", {}, "Experiments"), errorBox(list.status, list.body)); return; }
  const reports = h("div", { id: "experiment-reports" });
  set(main, h("h1", {}, "Experiments"),
    list.body.data.length ? null : h("p", { class: "muted" }, "No model alias of this org has a split."),
    table([
      { label: "Experiment", value: e => h("strong", {}, e.id) },
      { label: "Alias", value: e => e.alias },
      { label: "Variants", value: e => e.variants.map(v => h("span", { class: "tag" }, `${v.name} ${v.weight}`)) },
      { label: "From", value: e => e.start },
      { label: "Until", value: e => e.end || "open" },
    ], list.body.data, { id: "experiments-table" }),
    reports);
  for (const e of list.body.data) {
    const r = await admin("GET", `/experiments/${encodeURIComponent(e.id)}/report`);
    reports.append(h("div", { class: "card", "data-experiment": e.id }, h("h2", {}, `Report: ${e.id}`),
      r.status === 200 ? report(r.body) : errorBox(r.status, r.body)));
  }
}

function report(rep) {
  const variants = rep.variants || [];
  const tests = [];
  for (const v of variants) {
    for (const [metric, t] of Object.entries(v.vs_control || {})) {
      if (t) tests.push({ variant: v.variant, metric, ...t });
    }
  }
  return [
    h("p", { class: "verdict", "data-winner": rep.verdict && rep.verdict.winner || "" }, "Verdict: ", h("strong", {}, rep.verdict ? rep.verdict.text : "—")),
    table([
      { label: "Variant", value: v => [v.variant, v.control ? " (control)" : ""] },
      { label: "Requests", value: v => String(v.requests), num: true },
      { label: "Error rate", value: v => fmt(v.error_rate), num: true },
      { label: "Latency mean / p50 / p95 (ms)", value: v => `${fmt(v.latency_ms.mean)} / ${fmt(v.latency_ms.p50)} / ${fmt(v.latency_ms.p95)}`, num: true },
      { label: "TTFT p50 (ms)", value: v => fmt(v.ttft_ms.p50), num: true },
      { label: "Cost / request (USD)", value: v => fmt(v.cost_per_request_usd), num: true },
      { label: "Score (n)", value: v => `${fmt(v.feedback.mean_score)} (${v.feedback.n})`, num: true },
    ], variants),
    tests.length ? [h("h2", {}, "Against the control"), table([
      { label: "Variant", value: t => t.variant },
      { label: "Metric", value: t => t.metric },
      { label: "Difference", value: t => fmt(t.difference), num: true },
      { label: "95% CI", value: t => (t.ci95 ? `[${fmt(t.ci95[0])}, ${fmt(t.ci95[1])}]` : "—"), num: true },
      { label: "Statistic", value: t => fmt(t.statistic), num: true },
      { label: "p-value", value: t => fmt(t.p_value), num: true },
      { label: "df", value: t => fmt(t.df), num: true },
      { label: "Min. detectable effect", value: t => fmt(t.mde), num: true },
      { label: "Significant", value: t => (t.significant ? "yes" : "no") },
    ], tests)] : null,
    h("details", {}, h("summary", {}, "Full report"), h("pre", {}, JSON.stringify(rep, null, 2))),
  ];
}
