// #/requests: the request log, newest first, paged (after=<last_id>), filtered; one request's detail.
import { get, query } from "../api.js";
import { h, usd, when, num, pairs, table, clear } from "../dom.js";

export const TITLE = "Requests";
const DIMENSIONS = ["key", "user", "team", "project", "customer", "model", "tag"];
const PAGE = 50;
let trail = []; // the `after` of each earlier page, for "Newer"
let trailFor = null;

function localInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function filterForm(params, ctx) {
  const field = (label, control) => h("label", { class: "field" }, h("span", {}, label), control);
  const form = h("form", { class: "filters", "data-testid": "request-filters" },
    field("Since", h("input", { type: "datetime-local", name: "since", value: localInput(params.get("since")) })),
    field("Until", h("input", { type: "datetime-local", name: "until", value: localInput(params.get("until")) })),
    DIMENSIONS.map((d) => field(d, h("input", { name: d, value: params.get(d) || "", autocomplete: "off", placeholder: "any" }))),
    h("div", { class: "buttons" },
      h("button", { type: "submit", class: "primary" }, "Filter"),
      h("button", { type: "button", on: { click: () => ctx.setQuery({}) } }, "Clear")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    for (const name of ["since", "until"]) if (values[name]) values[name] = new Date(values[name]).toISOString();
    ctx.setQuery(values);
  });
  return form;
}

function value(v) {
  if (v === null || v === undefined) return h("span", { class: "muted" }, "–");
  if (Array.isArray(v)) return v.join(", ");
  if (typeof v === "object") return kv(v);
  return String(v);
}

/** A definition list of an object's fields, every value as text. */
function kv(obj, labels) {
  return h("dl", { class: "kv" }, Object.entries(obj).map(([k, v]) => [h("dt", {}, labels?.[k] || k), h("dd", {}, value(v))]));
}

const MONEY_FIELDS = new Set(["cost", "estimate", "estimated_cost", "reserved", "reservation"]);

/** One request's detail; its Close gives the focus back to ``row``. */
function detail(r, row) {
  const head = {};
  for (const [k, v] of Object.entries(r)) {
    if (["attributes", "usage", "breakdown"].includes(k)) continue;
    head[k] = MONEY_FIELDS.has(k) && typeof v === "string" ? usd(v) : v;
  }
  const breakdown = Object.fromEntries(Object.entries(r.breakdown || {}).map(([k, v]) => [k, usd(v)]));
  return h("section", { class: "card", id: "request-detail", "data-request": r.request_id },
    h("div", { class: "page-head" }, h("h2", {}, "Request ", h("span", { class: "mono" }, r.request_id)),
      h("button", { type: "button", class: "small", on: { click: (e) => {
        e.target.closest("section").remove();
        row.classList.remove("selected");
        row.focus({ preventScroll: false });
      } } }, "Close")),
    kv(head),
    h("h3", {}, "Attributes"), kv(r.attributes || {}),
    h("h3", {}, "Usage (tokens)"), kv(r.usage || {}),
    Object.keys(breakdown).length ? [h("h3", {}, "Cost breakdown"), kv(breakdown)] : null);
}

function status(s) {
  const cls = s === "ok" || s === "settled" || s === "success" ? "ok" : /refus|error|fail|timeout|cancel/.test(s || "") ? "bad" : "warn";
  return h("span", { class: "badge " + cls }, s);
}

export async function render(view, params, ctx) {
  const filters = {};
  for (const name of ["since", "until", ...DIMENSIONS]) if (params.get(name)) filters[name] = params.get(name);
  const after = params.get("after") || "";
  const key = JSON.stringify(filters);
  if (trailFor !== key) {
    trail = [];
    trailFor = key;
  }
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Request log")), filterForm(params, ctx));
  const page = await get("/requests" + query({ ...filters, limit: PAGE, after }));
  if (ctx.stale()) return;
  const holder = h("div", {});
  const rows = page.data.map((r) => {
    const a = r.attributes || {};
    const row = h("tr", { class: "clickable", tabindex: "0", "data-request": r.request_id },
      h("td", {}, when(r.started_at)),
      h("td", { class: "model" }, r.model ?? ""),
      h("td", {}, status(r.status)),
      h("td", { class: "num" }, usd(r.cost)),
      h("td", { class: "num" }, num((r.usage || {}).input_tokens ?? 0)),
      h("td", { class: "num" }, num((r.usage || {}).output_tokens ?? 0)),
      h("td", {}, a.user ?? ""),
      h("td", {}, a.key ?? ""),
      h("td", { class: "other" }, pairs(Object.fromEntries(Object.entries(a).filter(([k]) => !["user", "key", "model"].includes(k) && a[k] !== null && !(Array.isArray(a[k]) && !a[k].length))))));
    const open = (byKeyboard) => {
      for (const other of view.querySelectorAll("tr.selected")) other.classList.remove("selected");
      row.classList.add("selected");
      const shown = detail(r, row);
      clear(holder).append(shown);
      holder.scrollIntoView({ block: "nearest" });
      if (byKeyboard) shown.querySelector("button").focus(); // from the keyboard: on to the detail
    };
    row.addEventListener("click", () => open(false));
    row.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        open(true);
      }
    });
    return row;
  });
  const pager = h("div", { class: "pager" },
    h("button", { type: "button", id: "newer", disabled: !after, on: { click: () => {
      const previous = trail.pop() || "";
      ctx.setQuery({ ...filters, after: previous });
    } } }, "← Newer"),
    h("button", { type: "button", id: "older", disabled: !page.has_more, on: { click: () => {
      trail.push(after);
      ctx.setQuery({ ...filters, after: page.last_id });
    } } }, "Older →"),
    h("span", { class: "muted" }, `${page.data.length} requests on this page`));
  view.append(holder,
    table(["Started", "Model", "Status", "Cost", "Input tokens", "Output tokens", "User", "Key", "Other"], rows,
      { "data-testid": "requests" },
      Object.keys(filters).length ? "No requests match these filters." : "No requests yet: they appear once a request goes through the gateway."),
    pager);
}
