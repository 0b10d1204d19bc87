// #/alerts: alert deliveries (what was sent where, what is pending, what failed); retry a failure.
import { get, post, query } from "../api.js";
import { acting } from "../ui.js";
import { h, when, pairs, table, notice } from "../dom.js";

export const TITLE = "Alerts";
const STATES = ["", "pending", "delivered", "failed", "skipped"];
let flash = null;

export async function render(view, params, ctx) {
  const state = params.get("state") || "";
  const destination = params.get("destination") || "";
  const before = params.get("before") || "";
  const select = h("select", { name: "state" }, STATES.map((s) => h("option", { value: s, selected: s === state }, s || "any")));
  const dest = h("input", { name: "destination", value: destination, autocomplete: "off", placeholder: "any" });
  const form = h("form", { class: "filters" },
    h("label", { class: "field" }, h("span", {}, "State"), select),
    h("label", { class: "field" }, h("span", {}, "Destination"), dest),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Filter")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    ctx.setQuery({ state: select.value, destination: dest.value.trim() });
  });
  select.addEventListener("change", () => form.requestSubmit());
  const messages = h("div", { class: "messages" });
  if (flash) messages.append(notice(flash, "ok"));
  flash = null;
  const act = acting(ctx, messages, (done) => { flash = done; });
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Alert deliveries")), form, messages);
  const page = await get("/alerts" + query({ state, destination, before, limit: 100 }));
  if (ctx.stale()) return;
  const rows = page.data.map((d) => {
    const e = d.event || {};
    const retry = d.state === "failed" && e.id ? h("button", { type: "button", class: "small", on: { click: async () => {
      await act(() => post("/alerts/retry", { event_id: e.id, destination: d.destination }),
        `Retrying ${e.type ?? "the alert"} to ${d.destination}`);
    } } }, "Retry") : null;
    return h("tr", { "data-event": e.id ?? "", "data-destination": d.destination },
      h("td", {}, h("strong", {}, e.type ?? ""), h("div", {}, e.budget ?? e.budget_id ?? ""),
        e.instance && Object.keys(e.instance).length ? h("div", { class: "muted" }, pairs(e.instance)) : null,
        h("div", { class: "muted" }, when(e.created_at))),
      h("td", { class: "wrap" }, e.summary ?? ""),
      h("td", {}, d.destination),
      h("td", {}, h("div", { class: "actions" }, h("span", { class: "badge " + d.state }, d.state), retry),
        h("div", { class: "muted" }, `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`)),
      h("td", {}, d.delivered_at ? when(d.delivered_at) : d.next_attempt_at ? ["next ", when(d.next_attempt_at)] : ""),
      h("td", { class: "wrap error-text" }, d.last_error ?? ""));
  });
  view.append(
    table(["Event", "Summary", "Destination", "State", "Delivered / next", "Last error"], rows, { "data-testid": "alerts" },
      state || destination ? "No deliveries match these filters."
        : "No alerts yet: one is sent when a budget crosses a threshold, is forecast to run out, or starts refusing requests."),
    h("div", { class: "pager" },
      before ? h("button", { type: "button", on: { click: () => ctx.setQuery({ state, destination }) } }, "← Newest") : null,
      page.next_before ? h("button", { type: "button", on: { click: () => ctx.setQuery({ state, destination, before: page.next_before }) } }, "Older →") : null));
}
