// Spend of the caller's org from the spend API: the month so far by day (chart), by cost
// center and by model. Money is exact: figures come from the API's decimal `cost_usd` strings
// (a JSON number past 2^53 nano-dollars would round) and are summed as BigInt nano-dollars.

import { h, set, svg, table, errorBox, usd } from "./dom.js";
import { admin } from "./api.js";

// Nano-dollars of a decimal USD string ("12.000000345", "-0.5").
export function nano(text) {
  const neg = text.startsWith("-");
  const [whole, frac = ""] = (neg ? text.slice(1) : text).split(".");
  const v = BigInt(whole) * 1000000000n + BigInt((frac + "000000000").slice(0, 9));
  return neg ? -v : v;
}

export async function render(main) {
  const today = new Date().toISOString().slice(0, 10);
  const from = h("input", { id: "spend-from", type: "date", value: `${today.slice(0, 8)}01` });
  const to = h("input", { id: "spend-to", type: "date", value: today });
  const out = h("div", { id: "spend-out" });
  const form = h("form", { id: "spend-form", class: "card" }, h("div", { class: "row" },
    h("div", {}, h("label", { for: "spend-from" }, "From"), from),
    h("div", {}, h("label", { for: "spend-to" }, "To"), to),
    h("div", { class: "narrow" }, h("button", { type: "submit" }, "Show"))));

  async function show() {
    const range = { from: from.value, to: to.value };
    const [byDay, byCc, byModel] = await Promise.all([
      admin("GET", "/spend", undefined, { ...range, group_by: "day" }),
      admin("GET", "/spend", undefined, { ...range, group_by: "cost_center" }),
      admin("GET", "/spend", undefined, { ...range, group_by: "model" }),
    ]);
    for (const r of [byDay, byCc, byModel]) if (r.status !== 200) { set(out, errorBox(r.status, r.body)); return; }
    const total = nano(byDay.body.total.cost_usd);
    const charted = byDay.body.data.reduce((s, d) => s + nano(d.cost_usd), 0n);
    const money = x => usd(nano(x.cost_usd));
    set(out,
      h("p", {}, "Total: ", h("strong", { id: "spend-total", "data-nanousd": total.toString() }, usd(total)),
        ` · ${byDay.body.total.requests} requests`),
      h("h2", {}, "By day"), chart(byDay.body.data, charted),
      h("h2", {}, "By cost center"),
      table([{ label: "Cost center", value: r => r.cost_center || "(none)" }, { label: "Requests", value: r => String(r.requests), num: true }, { label: "Cost", value: money, num: true }], byCc.body.data, { id: "spend-by-cc" }),
      h("h2", {}, "By model"),
      table([{ label: "Model", value: r => r.model || "(no model)" }, { label: "Requests", value: r => String(r.requests), num: true }, { label: "Tokens", value: r => String(r.prompt_tokens + r.completion_tokens), num: true }, { label: "Cost", value: money, num: true }], byModel.body.data, { id: "spend-by-model" }));
  }

  form.addEventListener("submit", ev => { ev.preventDefault(); show(); });
  set(main, h("h1", {}, "Spend"), form, out);
  await show();
}

// Bars per day; the chart's own total (the sum of its bars) is on it, to compare with the API's.
function chart(days, charted) {
  const W = 800, H = 240, pad = 30;
  const max = days.reduce((m, d) => (nano(d.cost_usd) > m ? nano(d.cost_usd) : m), 1n);
  const bw = days.length ? Math.min((W - 2 * pad) / days.length, 60) : 0;
  const bars = days.map((d, i) => {
    const v = nano(d.cost_usd);
    const bh = Number((v * BigInt(H - 2 * pad)) / max);
    return svg("g", {},
      svg("rect", { x: pad + i * bw + 1, y: H - pad - bh, width: Math.max(bw - 2, 1), height: bh, "data-day": d.day, "data-nanousd": v.toString() },
        svg("title", {}, `${d.day}: ${usd(v)}`)),
      svg("text", { x: pad + i * bw + bw / 2, y: H - pad + 12, "text-anchor": "middle" }, d.day.slice(5)));
  });
  return svg("svg", { class: "chart", id: "spend-chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Spend per day", "data-total-nanousd": charted.toString() },
    svg("text", { x: pad, y: 14 }, `max ${usd(max)} per day · sum ${usd(charted)}`), bars);
}
