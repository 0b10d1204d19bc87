// #/usage: spend, requests and tokens over time, by any attribute, from /usage/timeseries;
// a uPlot chart, filters, and a CSV of the same points made here in the browser.
import { get, query } from "../api.js";
import { h, usd, num, table, addMoney, notice } from "../dom.js";

export const TITLE = "Usage";
const DIMENSIONS = ["key", "user", "team", "project", "customer", "model", "tag"];
const SPANS = [["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"], ["90d", "last 90 days"]];
const METRICS = {
  cost: ["Spend (USD)", (p) => parseFloat(p.cost)], // parseFloat for plotting only
  requests: ["Requests", (p) => p.requests],
  tokens: ["Tokens (input + output)", (p) => p.input_tokens + p.output_tokens],
  input_tokens: ["Input tokens", (p) => p.input_tokens],
  output_tokens: ["Output tokens", (p) => p.output_tokens],
};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563", "#65a30d"];
const MAX_SERIES = 8;
const MAX_PAGES = 20;
const SHOWN_ROWS = 500;
// The columns of `spendgate report --format csv` (spendgate.reports.export), in its order.
const CSV_COLUMNS = ["start", "end", "by", "group", "cost_usd", "requests", "input_tokens", "output_tokens"];

/** Every page of the series (cursor after cursor), up to MAX_PAGES. */
async function fetchAll(params) {
  let first = null;
  const points = [];
  let cursor = null;
  for (let i = 0; i < MAX_PAGES; i++) {
    const page = await get("/usage/timeseries" + query({ ...params, limit: 10000, cursor }));
    first = first || page;
    points.push(...page.data);
    if (!page.has_more) return { ...first, data: points, truncated: false };
    cursor = page.next_cursor;
  }
  return { ...first, data: points, truncated: true };
}

function csvField(value) {
  let s = value === null || value === undefined ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(s) && isNaN(Number(s))) s = "'" + s; // no formulas in a spreadsheet
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

/** The CSV `spendgate report --format csv` writes for the same points (one row per point). */
export function toCsv(points, by) {
  const lines = [CSV_COLUMNS.join(",")];
  for (const p of points) {
    const row = { ...p, by: by || "", cost_usd: p.cost };
    lines.push(CSV_COLUMNS.map((c) => csvField(row[c])).join(","));
  }
  return lines.join("\n") + "\n";
}

function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv;charset=utf-8" }));
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** The span choices, with the one in the address when it is another (a link's start=4d). */
function spans(current) {
  return SPANS.some(([v]) => v === current) ? SPANS : [...SPANS, [current, current.length < 5 ? `last ${current}` : `since ${current}`]];
}

function filterForm(params, ctx) {
  const select = (name, options, value) => h("select", { name, id: "usage-" + name },
    options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
  const field = (label, control) => h("label", { class: "field" }, h("span", {}, label), control);
  const by = params.get("by") || "";
  const form = h("form", { class: "filters", "data-testid": "usage-filters" },
    field("Span", select("start", spans(params.get("start") || "7d"), params.get("start") || "7d")),
    field("Bucket", select("bucket", [["day", "day"], ["hour", "hour"]], params.get("bucket") || "day")),
    field("Group by", select("by", [["", "nothing"], ...DIMENSIONS.map((d) => [d, d])], by)),
    field("Show", select("metric", Object.entries(METRICS).map(([k, [label]]) => [k, label]), params.get("metric") || "cost")),
    h("details", { class: "more", open: DIMENSIONS.some((d) => params.get(d)) },
      h("summary", {}, "Filters"),
      h("div", { class: "filters" }, DIMENSIONS.map((d) =>
        field(d, h("input", { name: d, value: params.get(d) || "", autocomplete: "off", placeholder: "any" }))))),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Apply")));
  form.addEventListener("change", (event) => {
    if (event.target.tagName === "SELECT") form.requestSubmit();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.setQuery(Object.fromEntries(new FormData(form).entries()));
  });
  return form;
}

/** x: every bucket start of the span (empty ones 0); one series per group, the biggest first. */
function chartData(series, metric) {
  const value = METRICS[metric][1];
  const step = series.bucket_seconds;
  const first = Math.floor(Date.parse(series.start) / 1000);
  const end = Math.floor(Date.parse(series.end) / 1000);
  const xs = [];
  for (let t = first; t < end; t += step) xs.push(t);
  const index = new Map(xs.map((t, i) => [t, i]));
  const totals = new Map();
  for (const p of series.data) totals.set(p.group, (totals.get(p.group) || 0) + value(p));
  const groups = [...totals.keys()].sort((a, b) => totals.get(b) - totals.get(a));
  const shown = groups.slice(0, MAX_SERIES);
  const rest = groups.length > MAX_SERIES;
  const ys = shown.map(() => new Array(xs.length).fill(0));
  const other = rest ? new Array(xs.length).fill(0) : null;
  const slot = new Map(shown.map((g, i) => [g, i]));
  for (const p of series.data) {
    const i = index.get(Math.floor(Date.parse(p.start) / 1000));
    if (i === undefined) continue;
    if (slot.has(p.group)) ys[slot.get(p.group)][i] += value(p);
    else other[i] += value(p);
  }
  const names = shown.map((g) => (g === null ? (series.by ? `(no ${series.by})` : "all") : g));
  if (rest) {
    ys.push(other);
    names.push(`${groups.length - MAX_SERIES} more`);
  }
  return { data: [xs, ...ys], names };
}

function drawChart(holder, series, metric) {
  if (!window.uPlot) {
    holder.append(notice("The chart library did not load."));
    return;
  }
  const { data, names } = chartData(series, metric);
  const money = metric === "cost";
  const opts = {
    width: Math.max(280, holder.clientWidth || 800),
    height: holder.clientWidth < 500 ? 240 : 320,
    scales: { x: { time: true } },
    // The buckets are UTC hours and days (the points' table says so): the axis in UTC too, so a
    // day's point sits at its midnight whatever the browser's zone.
    tzDate: (ts) => window.uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    series: [{}, ...names.map((name, i) => ({
      label: name, // uPlot writes labels as text
      stroke: COLORS[i % COLORS.length],
      fill: names.length === 1 ? "rgba(37,99,235,0.12)" : undefined,
      width: 2,
      points: { show: data[0].length <= 60 },
      value: (_u, v) => (v === null || v === undefined ? "–" : money ? "$" + v.toFixed(4) : v.toLocaleString()),
    }))],
    axes: [{ label: "time (UTC)" }, { label: METRICS[metric][0], size: 70, values: (_u, ticks) => ticks.map((v) => (money ? "$" + v : v.toLocaleString())) }],
  };
  const plot = new window.uPlot(opts, data, holder);
  const resize = new ResizeObserver(() => {
    if (!holder.isConnected) {
      resize.disconnect();
      plot.destroy();
      return;
    }
    plot.setSize({ width: Math.max(280, holder.clientWidth), height: holder.clientWidth < 500 ? 240 : 320 });
  });
  resize.observe(holder);
}

/** Per group: cost (summed exactly), requests, tokens. */
function totalsTable(series) {
  const groups = new Map();
  for (const p of series.data) {
    const t = groups.get(p.group) || { cost: [], requests: 0, input_tokens: 0, output_tokens: 0 };
    t.cost.push(p.cost);
    t.requests += p.requests;
    t.input_tokens += p.input_tokens;
    t.output_tokens += p.output_tokens;
    groups.set(p.group, t);
  }
  const rows = [...groups.entries()].map(([g, t]) => ({ g, ...t, cost: addMoney(...t.cost) }));
  rows.sort((a, b) => b.requests - a.requests);
  return table([series.by || "group", "Spend", "Requests", "Input tokens", "Output tokens"], rows.map((r) =>
    h("tr", {}, h("td", { class: "group" }, r.g === null ? h("span", { class: "muted" }, series.by ? `(no ${series.by})` : "all") : r.g),
      h("td", { class: "num" }, usd(r.cost)), h("td", { class: "num" }, num(r.requests)),
      h("td", { class: "num" }, num(r.input_tokens)), h("td", { class: "num" }, num(r.output_tokens)))),
  { "data-testid": "usage-totals" });
}

export async function render(view, params, ctx) {
  const metric = METRICS[params.get("metric")] ? params.get("metric") : "cost";
  const request = { start: params.get("start") || "7d", bucket: params.get("bucket") || "day", by: params.get("by") || "" };
  for (const d of DIMENSIONS) if (params.get(d)) request[d] = params.get(d);
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Usage")), filterForm(params, ctx));
  const series = await fetchAll(request);
  if (ctx.stale()) return;
  // By tag a request counts once under each of its tags: the headline reads the same span
  // ungrouped, so it counts each request once (as `spendgate report` totals do).
  const whole = series.by === "tag" ? await fetchAll({ ...request, by: "" }) : series;
  if (ctx.stale()) return;
  const total = addMoney(...whole.data.map((p) => p.cost));
  const requests = whole.data.reduce((n, p) => n + p.requests, 0);
  const tokens = whole.data.reduce((n, p) => n + p.input_tokens + p.output_tokens, 0);
  const exportButton = h("button", { type: "button", id: "export-csv", on: { click: () =>
    download(`spendgate-usage-${series.bucket}${series.by ? "-by-" + series.by : ""}.csv`, toCsv(series.data, series.by)) } },
  "Export CSV");
  const chart = h("div", { class: "chart", id: "usage-chart", role: "img", "aria-label": `${METRICS[metric][0]} per ${series.bucket}` });
  const rows = series.data.slice(-SHOWN_ROWS).reverse().map((p) => h("tr", {},
    h("td", {}, p.start.replace("T", " ").replace(/:00Z$/, "Z")), h("td", { class: "group" }, p.group ?? ""),
    h("td", { class: "num" }, usd(p.cost)), h("td", { class: "num" }, num(p.requests)),
    h("td", { class: "num" }, num(p.input_tokens)), h("td", { class: "num" }, num(p.output_tokens))));
  // tag: a request counts once per tag, so per-tag sums can pass the total
  view.append(
    h("section", { class: "card" },
      h("div", { class: "page-head" },
        h("h2", {}, `${usd(total)} · ${num(requests)} requests · ${num(tokens)} tokens`),
        exportButton),
      series.by === "tag" ? h("p", { class: "muted" }, "A request with several tags counts once under each tag below, and once in the total above.") : null,
      series.truncated ? notice("Only the first pages of points are shown: narrow the span or filters.") : null,
      chart),
    h("h3", {}, "Totals"), totalsTable(series),
    h("details", { class: "points" },
      h("summary", {}, series.data.length > SHOWN_ROWS
        ? `Latest ${SHOWN_ROWS} of ${series.data.length} points (the CSV has all)` : `All ${series.data.length} points`),
      table(["Bucket (UTC)", series.by || "group", "Spend", "Requests", "Input tokens", "Output tokens"], rows, { "data-testid": "usage-points" })));
  drawChart(chart, series, metric);
}
