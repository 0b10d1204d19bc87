// #/budgets: each budget's use, reset time and forecast; change a limit, pause, reset, delete.
// Below them the rate limits (./limits.js): use per instance; change the amount, delete.
import { get, patch, post, del, path, query } from "../api.js";
import { h, usd, when, pairs, table, bar, notice, refusedNote, refusalCounts } from "../dom.js";
import { acting, confirmDialog, promptDialog } from "../ui.js";
import { budgetLegend } from "./overview.js";
import { loadLimits, limitsSection } from "./limits.js";

export const TITLE = "Budgets";
const MAX_FORECASTS = 100;
const AMOUNT = /^[0-9]+(\.[0-9]+)?$/;
let flash = null; // what the last change did, shown once after the page reloads its data

function fillForecast(cell, f) {
  cell.textContent = "";
  if (!f) {
    cell.append(h("span", { class: "muted" }, "–"));
    cell.title = "No forecast could be made: GET /admin/budgets/{id}/forecast says why.";
    return;
  }
  const expected = h("div", {}, "expected ", usd(f.expected), h("span", { class: "muted" }, ` (${usd(f.low)}–${usd(f.high)})`));
  const out = f.runs_out_at
    ? h("div", { class: f.runs_out_before_end ? "badge bad" : "badge warn" }, "runs out ", when(f.runs_out_at))
    : h("div", { class: "badge ok" }, f.window_end ? "lasts the window" : "no run-out in 30 days");
  cell.append(expected, out);
  cell.title = (f.notes || []).join("\n");
}

const rowKey = (b) => `${b.id}\u0000${pairs(b.instance || {})}`;

/** The rows' forecasts in one request after the rows are shown (a request per row kept the
 * browser busy with a hundred answers); one made in the last minute will do: it moves slowly. */
function fillForecasts(cells, ctx) {
  if (!cells.length) return;
  get("/budgets" + query({ forecasts: MAX_FORECASTS, max_age: 60 })).then(({ data }) => {
    if (ctx.stale()) return;
    const made = new Map(data.map((r) => [rowKey(r), r.forecast]));
    for (const [cell, b] of cells) fillForecast(cell, made.get(rowKey(b)));
  }).catch((err) => {
    for (const [cell] of cells) {
      cell.textContent = "–";
      cell.title = err.message;
    }
  });
}

export async function render(view, _params, ctx) {
  // The last hour's refusals: a note on each budget and limit that refused (none: the page stands).
  const [{ data }, limits, refused] = await Promise.all([get("/budgets"), loadLimits(), get("/refusals").catch(() => null)]);
  if (ctx.stale()) return;
  const refusals = refusalCounts(refused);
  const messages = h("div", { class: "messages" });
  if (flash) messages.append(notice(flash, "ok"));
  flash = null;

  const act = acting(ctx, messages, (done) => { flash = done; });

  const cells = []; // [forecast cell, row]: filled by fillForecasts once the rows are shown
  const rows = data.map((b, i) => {
    const name = b.label || b.id;
    const instance = b.instance && Object.keys(b.instance).length ? b.instance : null;
    const forecast = h("td", { class: "wrap" }, h("span", { class: "muted" }, i < MAX_FORECASTS ? "…" : "–"));
    if (i < MAX_FORECASTS) cells.push([forecast, b]);
    const paused = b.limit === "0";
    // A wildcard budget's row is one instance (user=alice) of it, but its limit, pause and
    // deletion are the whole budget's: every instance. Its reset is the instance's own.
    const whole = instance ? b.id : name;
    const every = instance ? `This changes ${b.id} for every ${Object.keys(instance).join(" and ")}, not only ${pairs(instance)}. ` : "";
    const button = (label, cls, handler) => h("button", { type: "button", class: "small " + (cls || ""), on: { click: handler } }, label);
    return h("tr", { "data-budget": b.id, "data-instance": instance ? pairs(instance) : "" },
      h("td", { class: "name" }, h("strong", {}, name), name !== b.id ? h("div", { class: "muted mono" }, b.id) : null,
        h("div", { class: "muted" }, instance ? pairs(instance) : pairs(b.selector) || "every request")),
      h("td", {}, bar(b.spent, b.reserved, b.limit),
        h("div", { class: "use" },
          h("span", { "data-testid": "spent" }, usd(b.spent)),
          b.reserved !== "0" ? [" + ", h("span", { "data-testid": "reserved" }, usd(b.reserved)), " held"] : null,
          " of ",
          paused ? h("span", { class: "badge bad", "data-testid": "limit" }, "paused") : h("span", { "data-testid": "limit" }, usd(b.limit)),
          h("span", { class: "muted" }, ` · ${b.percent}%`)),
        refusedNote(refusals.get(`budget|${b.id}`), "budget", Boolean(instance))),
      h("td", { class: "num" }, usd(b.available)),
      h("td", {}, when(b.resets_at)),
      forecast,
      h("td", {}, h("div", { class: "actions" },
        button("Change limit", "", async () => {
          const value = await promptDialog(`Change the limit of ${whole}`, "New limit (USD)", b.limit,
            `${every}Takes effect now for new requests.`);
          if (value === null) return;
          if (!AMOUNT.test(value)) {
            messages.textContent = "";
            messages.append(notice(`"${value}" is not an amount: write it like 25 or 12.50`));
            return;
          }
          act(() => patch(path`/budgets/${b.id}`, { limit: value }), `${whole}: limit now $${value}`);
        }),
        paused ? null : button("Pause", "", async () => {
          if (await confirmDialog(`Pause ${whole}?`, `${every}Its limit becomes 0: every new request it covers is refused (429) until you change the limit again.`, "Pause", true)) {
            act(() => patch(path`/budgets/${b.id}`, { limit: "0" }), `${whole} paused (limit 0)`);
          }
        }),
        button("Reset", "", async () => {
          const what = instance ? ` for ${pairs(instance)}` : "";
          if (await confirmDialog(`Reset ${name}${what}?`, "The current window's spend goes back to zero.", "Reset", true)) {
            act(() => post(path`/budgets/${b.id}/reset`, instance ? { instance } : {}), `${name} reset`);
          }
        }),
        button("Delete", "", async () => {
          if (await confirmDialog(`Delete ${whole}?`, `${every}The budget stops being enforced. Requests in flight against it end as usual.`, "Delete", true)) {
            act(() => del(path`/budgets/${b.id}`), `${whole} deleted`);
          }
        }))));
  });
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Budgets"), h("span", { class: "muted" }, `${data.length} budgets`)),
    messages,
    budgetLegend(),
    table(["Budget", "Use", "Available", "Resets", "Forecast", ""], rows,
      { "data-testid": "budgets" }),
    limitsSection(limits, ctx, refusals));
  fillForecasts(cells, ctx);
}
