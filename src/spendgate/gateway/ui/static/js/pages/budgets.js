// #/budgets: each budget's use, reset time and forecast; change a limit, pause, reset, delete.
// Below them the rate limits (./limits.js): use per instance; change the amount, delete.
import { get, patch, post, del, path, query } from "../api.js";
import { h, usd, when, pairs, table, bar, notice } from "../dom.js";
import { acting, confirmDialog, promptDialog } from "../ui.js";
import { budgetLegend } from "./overview.js";
import { loadLimits, limitsSection } from "./limits.js";

export const TITLE = "Budgets";
const MAX_FORECASTS = 100;
const AMOUNT = /^[0-9]+(\.[0-9]+)?$/;
let flash = null; // what the last change did, shown once after the page reloads its data

function forecastCell(cell, b) {
  get(path`/budgets/${b.id}/forecast` + query(b.instance || {})).then((f) => {
    cell.textContent = "";
    const expected = h("div", {}, "expected ", usd(f.expected), h("span", { class: "muted" }, ` (${f.low}–${f.high})`));
    const out = f.runs_out_at
      ? h("div", { class: f.runs_out_before_end ? "badge bad" : "badge warn" }, "runs out ", when(f.runs_out_at))
      : h("div", { class: "badge ok" }, f.window_end ? "lasts the window" : "no run-out in 30 days");
    cell.append(expected, out);
    cell.title = (f.notes || []).join("\n");
  }).catch((err) => {
    cell.textContent = "–";
    cell.title = err.message;
  });
}

export async function render(view, _params, ctx) {
  const [{ data }, limits] = await Promise.all([get("/budgets"), loadLimits()]);
  if (ctx.stale()) return;
  const messages = h("div", { class: "messages" });
  if (flash) messages.append(notice(flash, "ok"));
  flash = null;

  const act = acting(ctx, messages, (done) => { flash = done; });

  const rows = data.map((b, i) => {
    const name = b.label || b.id;
    const instance = b.instance && Object.keys(b.instance).length ? b.instance : null;
    const forecast = h("td", { class: "wrap" }, h("span", { class: "muted" }, i < MAX_FORECASTS ? "…" : "–"));
    if (i < MAX_FORECASTS) forecastCell(forecast, b);
    const paused = b.limit === "0";
    const button = (label, cls, handler) => h("button", { type: "button", class: "small " + (cls || ""), on: { click: handler } }, label);
    return h("tr", { "data-budget": b.id, "data-instance": instance ? pairs(instance) : "" },
      h("td", {}, h("strong", {}, name), name !== b.id ? h("div", { class: "muted mono" }, b.id) : null,
        h("div", { class: "muted" }, instance ? pairs(instance) : pairs(b.selector) || "every request")),
      h("td", {}, bar(b.spent, b.reserved, b.limit),
        h("div", { class: "use" },
          h("span", { "data-testid": "spent" }, usd(b.spent)),
          b.reserved !== "0" ? [" + ", h("span", { "data-testid": "reserved" }, usd(b.reserved)), " held"] : null,
          " of ",
          paused ? h("span", { class: "badge bad", "data-testid": "limit" }, "paused") : h("span", { "data-testid": "limit" }, usd(b.limit)),
          h("span", { class: "muted" }, ` · ${b.percent}%`))),
      h("td", { class: "num" }, usd(b.available)),
      h("td", {}, when(b.resets_at)),
      forecast,
      h("td", {}, h("div", { class: "actions" },
        button("Change limit", "", async () => {
          const value = await promptDialog(`Change the limit of ${name}`, "New limit (USD)", b.limit,
            "Takes effect now for new requests.");
          if (value === null) return;
          if (!AMOUNT.test(value)) {
            messages.textContent = "";
            messages.append(notice(`"${value}" is not an amount: write it like 25 or 12.50`));
            return;
          }
          act(() => patch(path`/budgets/${b.id}`, { limit: value }), `${name}: limit now $${value}`);
        }),
        paused ? null : button("Pause", "", async () => {
          if (await confirmDialog(`Pause ${name}?`, "Its limit becomes 0: every new request it covers is refused (429) until you change the limit again.", "Pause", true)) {
            act(() => patch(path`/budgets/${b.id}`, { limit: "0" }), `${name} paused (limit 0)`);
          }
        }),
        button("Reset", "", async () => {
          const what = instance ? ` for ${pairs(instance)}` : "";
          if (await confirmDialog(`Reset ${name}${what}?`, "The current window's spend goes back to zero.", "Reset", true)) {
            act(() => post(path`/budgets/${b.id}/reset`, instance ? { instance } : {}), `${name} reset`);
          }
        }),
        button("Delete", "", async () => {
          if (await confirmDialog(`Delete ${name}?`, "The budget stops being enforced. Requests in flight against it end as usual.", "Delete", true)) {
            act(() => del(path`/budgets/${b.id}`), `${name} deleted`);
          }
        }))));
  });
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Budgets"), h("span", { class: "muted" }, `${data.length} budgets`)),
    messages,
    budgetLegend(),
    table(["Budget", "Use", "Available", "Resets", "Forecast", ""], rows,
      { "data-testid": "budgets" }),
    limitsSection(limits, ctx));
}
