// #/overview: spend today and this month, the budgets closest to their limit, refusals.
import { get } from "../api.js";
import { h, usd, when, num, pairs, table, bar } from "../dom.js";

export const TITLE = "Overview";

function stat(label, value, sub, cls, testid) {
  return h("div", { class: "stat " + (cls || ""), "data-testid": testid },
    h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

export function budgetLegend() {
  return h("div", { class: "legend" },
    h("span", {}, h("span", { class: "swatch spent" }), "spent"),
    h("span", {}, h("span", { class: "swatch reserved" }), "reserved (in flight)"),
    h("span", {}, h("span", { class: "swatch free" }), "available"));
}

function runOut(forecast) {
  if (!forecast) return h("span", { class: "muted" }, "no forecast");
  if (forecast.runs_out_at) {
    return h("span", { class: forecast.runs_out_before_end ? "badge bad" : "badge warn" }, "runs out ", when(forecast.runs_out_at));
  }
  return h("span", { class: "badge ok" }, "lasts the window");
}

const KINDS = { budget: ["budgets", "#dc2626"], rate_limit: ["rate limits", "#d97706"], cost_cap: ["cost caps", "#7c3aed"] };

/** The last hour's refusals per minute, a line per kind that refused any (uPlot). */
function refusalChart(holder, ref) {
  if (!window.uPlot) {
    holder.append(h("p", { class: "muted" }, "The chart library did not load."));
    return;
  }
  const start = Date.parse(ref.start) / 1000;
  const kinds = Object.keys(KINDS).filter((k) => (ref[k] || 0) > 0);
  const xs = ref.per_minute[kinds[0]].map((_, i) => start + i * 60);
  const size = () => ({ width: Math.max(260, holder.clientWidth || 600), height: 160 });
  const plot = new window.uPlot({
    ...size(),
    scales: { x: { time: true } },
    series: [{}, ...kinds.map((k) => ({ label: KINDS[k][0], stroke: KINDS[k][1], width: 2, points: { show: false } }))],
    axes: [{}, { size: 50 }],
  }, [xs, ...kinds.map((k) => ref.per_minute[k])], holder);
  const resize = new ResizeObserver(() => {
    if (!holder.isConnected) {
      resize.disconnect();
      plot.destroy();
      return;
    }
    plot.setSize(size());
  });
  resize.observe(holder);
}

function refusalsCard(ref) {
  const card = h("section", { class: "card", "data-testid": "overview-refusals" },
    h("div", { class: "page-head" }, h("h2", {}, "Refusals in the last hour"),
      h("span", { class: "muted" }, "every gateway process and SDK sharing this ledger, per minute")));
  if (!ref.total) {
    card.append(h("p", { class: "muted" }, "Nothing refused in the last hour."));
    return card;
  }
  const chart = h("div", { class: "chart small" });
  card.append(chart);
  const rows = ref.top.map((t) => h("tr", {},
    h("td", {}, KINDS[t.kind] ? KINDS[t.kind][0].replace(/s$/, "") : t.kind),
    h("td", {}, t.kind === "cost_cap" ? h("span", { class: "muted" }, "a request's own max_cost")
      : h("a", { href: "#/budgets" }, t.id)),
    h("td", { class: "num" }, num(t.count))));
  card.append(table(["Refused by", "Id", "Requests"], rows, { "data-testid": "overview-refusers" }));
  requestAnimationFrame(() => refusalChart(chart, ref));
  return card;
}

export async function render(view, _params, ctx) {
  const data = await get("/overview");
  if (ctx.stale()) return;
  const { spend, refusals: ref } = data;
  const today = spend?.today || {};
  const month = spend?.month || {};
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), h("span", { class: "muted" }, "as of ", when(data.now))),
    h("div", { class: "grid" },
      stat("Spend today (UTC)", usd(today.cost), `${num(today.requests)} requests`, "", "spend-today"),
      stat("Spend this month (UTC)", usd(month.cost), `${num(month.requests)} requests`, "", "spend-month"),
      stat("Refused by budgets, last hour", num(ref.budget), "all processes", ref.budget ? "bad" : "", "refusals-budget"),
      stat("Rate-limit hits, last hour", num(ref.rate_limit), `${num(ref.total)} refusals in all`,
        ref.rate_limit ? "bad" : "", "refusals-rate")),
  );
  const rows = (data.budgets || []).map((b) => h("tr", { "data-budget": b.id },
    h("td", {}, h("a", { href: "#/budgets" }, b.label || b.id),
      b.label && b.label !== b.id ? h("div", { class: "muted mono" }, b.id) : null, // two labels can read alike
      Object.keys(b.instance || {}).length ? h("div", { class: "muted" }, pairs(b.instance)) : null),
    h("td", {}, bar(b.spent, b.reserved, b.limit),
      h("div", { class: "use" },
        h("span", { "data-testid": "spent" }, usd(b.spent)),
        b.reserved !== "0" ? [" + ", h("span", { "data-testid": "reserved" }, usd(b.reserved)), " held"] : null,
        " of ", h("span", { "data-testid": "limit" }, usd(b.limit)),
        h("span", { class: "muted" }, ` · ${b.percent}%`))),
    h("td", {}, runOut(b.forecast)),
    h("td", {}, when(b.resets_at))));
  view.append(h("section", { class: "card" },
    h("div", { class: "page-head" },
      h("h2", {}, "Budgets closest to their limit"),
      h("a", { href: "#/budgets" }, `all ${num(data.budgets_total ?? rows.length)} budgets`)),
    budgetLegend(),
    table(["Budget", "Use", "Forecast", "Resets"], rows, { "data-testid": "overview-budgets" })),
    refusalsCard(ref));
}
