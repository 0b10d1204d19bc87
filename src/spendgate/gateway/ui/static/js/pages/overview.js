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

export async function render(view, _params, ctx) {
  const data = await get("/overview");
  if (ctx.stale()) return;
  const { spend, refusals } = data;
  const today = spend?.today || {};
  const month = spend?.month || {};
  const ref = refusals || null;
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Overview"), h("span", { class: "muted" }, "as of ", when(data.now))),
    h("div", { class: "grid" },
      stat("Spend today (UTC)", usd(today.cost), `${num(today.requests)} requests`, "", "spend-today"),
      stat("Spend this month (UTC)", usd(month.cost), `${num(month.requests)} requests`, "", "spend-month"),
      stat("Refused by budgets, last hour", ref ? num(ref.budget) : "–", ref ? "" : "not counted here",
        ref && ref.budget ? "bad" : "", "refusals-budget"),
      stat("Rate-limit hits, last hour", ref ? num(ref.rate_limit) : "–",
        ref ? `${num(ref.total)} refusals in all` : "not counted here", ref && ref.rate_limit ? "bad" : "", "refusals-rate")),
  );
  if (ref && ref.by_reason && Object.keys(ref.by_reason).length) {
    view.append(h("p", { class: "muted" }, "Refusals by reason (last hour, this gateway process): ",
      Object.entries(ref.by_reason).map(([k, v]) => `${k} ${v}`).join(" · ")));
  }
  const rows = (data.budgets || []).map((b) => h("tr", { "data-budget": b.id },
    h("td", {}, h("a", { href: "#/budgets" }, b.label || b.id), Object.keys(b.instance || {}).length
      ? h("div", { class: "muted" }, pairs(b.instance)) : null),
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
    table(["Budget", "Use", "Forecast", "Resets"], rows, { "data-testid": "overview-budgets" })));
}
