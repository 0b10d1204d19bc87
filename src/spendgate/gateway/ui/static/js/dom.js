// Small DOM helpers. Every string from the server goes in as a text node (textContent),
// never as HTML: model names, user ids and tags are attacker-controlled.

/** h("tr", {class: "x", on: {click: fn}}, "text", child, [more]) -> element */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (name === "value" || name === "checked" || name === "disabled" || name === "selected") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** "$12.5" from "12.5": the decimal string as the server gave it. */
export function usd(text) {
  return text === null || text === undefined ? "–" : "$" + text;
}

/** A date-time string as local time, short, with its zone (the overview's spans are UTC: a
 *  time without a zone would be ambiguous); the ISO text stays in the title. */
// One formatter for every time shown: toLocaleString with options builds a new one per call,
// which a page of a hundred rows paid a hundred times over.
const TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short",
});

export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "–");
  const d = new Date(iso);
  const shown = isNaN(d) ? iso : TIME.format(d);
  return h("time", { datetime: iso, title: iso }, shown);
}

export function num(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString();
}

/** How many requests a budget or limit refused in the last hour (GET /refusals), or nothing.
 * `whole`: the row is one instance of a wildcard budget or limit, and the count is all of them. */
export function refusedNote(count, what, whole) {
  if (!count) return null;
  return h("div", { class: "refused", "data-testid": "refused",
    title: `Requests this ${what} refused in the last hour, counted by every gateway process and SDK ` +
      "sharing the ledger. A request is refused when its worst case does not fit what is left, " +
      "so a budget can refuse before it is 100% used." },
  `${num(count)} refused in the last hour${whole ? " (all instances)" : ""}`);
}

/** GET /refusals' answer as a lookup: "budget|team-ml" -> count. */
export function refusalCounts(answer) {
  return new Map(((answer && answer.data) || []).map((r) => [`${r.kind}|${r.id}`, r.count]));
}

/** {user: "alice", team: "x"} -> "user=alice, team=x" (as text). */
export function pairs(obj) {
  const entries = Object.entries(obj || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "";
}

/** A table that scrolls sideways on a narrow screen; ``empty``: what an empty one says. An
 *  empty header (a column of buttons) is named "Actions" for screen readers. */
export function table(headers, rows, attrs, empty = "Nothing here yet.") {
  return h("div", { class: "table-wrap" },
    h("table", attrs || {},
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" },
        t === "" ? h("span", { class: "visually-hidden" }, "Actions") : t)))),
      h("tbody", {}, rows.length ? rows
        : h("tr", {}, h("td", { colspan: headers.length, class: "muted empty" }, empty)))));
}

/** Bar of spent (and reserved) against a limit. Widths via CSSOM, allowed by the CSP. */
export function bar(spent, reserved, limit) {
  const lim = parseFloat(limit);
  const s = parseFloat(spent) || 0;
  const r = parseFloat(reserved) || 0;
  const pct = (x) => (lim > 0 ? Math.min(100, (x / lim) * 100) : (x > 0 ? 100 : 0));
  const used = h("span", { class: "bar-spent" });
  const held = h("span", { class: "bar-reserved" });
  used.style.width = pct(s) + "%";
  held.style.width = Math.max(0, Math.min(100 - pct(s), pct(r))) + "%";
  const level = lim > 0 ? (s + r) / lim : (s + r > 0 ? 1 : 0);
  const el = h("div", {
    class: "bar" + (level >= 1 ? " bar-full" : level >= 0.8 ? " bar-high" : ""),
    role: "img",
    "aria-label": `spent ${spent}, reserved ${reserved}, limit ${limit} USD`,
    title: `spent $${spent} · reserved $${reserved} · limit $${limit}`,
  }, used, held);
  return el;
}

/** Sum of decimal strings, exactly (BigInt nanos): money is never summed as floats. */
export function addMoney(...values) {
  let total = 0n;
  for (const v of values) total += toNanos(v);
  return fromNanos(total);
}

const SCALE = 9;
function toNanos(text) {
  if (text === null || text === undefined || text === "") return 0n;
  const s = String(text).trim();
  const neg = s.startsWith("-");
  const [whole, frac = ""] = (neg ? s.slice(1) : s).split(".");
  const n = BigInt(whole || "0") * 10n ** BigInt(SCALE) + BigInt((frac + "0".repeat(SCALE)).slice(0, SCALE) || "0");
  return neg ? -n : n;
}

function fromNanos(n) {
  const neg = n < 0n;
  if (neg) n = -n;
  const unit = 10n ** BigInt(SCALE);
  const whole = (n / unit).toString();
  const frac = (n % unit).toString().padStart(SCALE, "0").replace(/0+$/, "");
  return (neg ? "-" : "") + whole + (frac ? "." + frac : "");
}

/** A message line: error (red) or note. */
export function notice(text, kind) {
  return h("p", { class: "notice " + (kind || "error"), role: kind === "ok" ? "status" : "alert" }, text);
}
