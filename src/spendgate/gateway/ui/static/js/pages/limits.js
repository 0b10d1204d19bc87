// The "Rate limits" section of #/budgets: each limit with its instances' use in the current
// window; change its amount, delete it (each after a confirmation). Limits of the gateway's
// config are refused by the server (409): its message is shown.
import { get, patch, del, path } from "../api.js";
import { h, usd, pairs, table, notice, refusedNote } from "../dom.js";
import { acting, confirmDialog, promptDialog } from "../ui.js";

const MAX_INSTANCES = 10; // per limit, the most used first
const COUNT = /^[0-9]+$/;
const USD = /^[0-9]+(\.[0-9]+)?$/;
let flash = null; // what the last change did, shown once after the page reloads its data

/** GET /limits' rows, or the error (the budgets still show without them). */
export function loadLimits() {
  return get("/limits").then((body) => body.data, (err) => err);
}

/** An amount as the API gives it: USD for a usd limit, else a count. */
function amountText(limit, text) {
  return limit.kind === "usd" ? usd(text) : text;
}

function perText(limit) {
  if (limit.per) return limit.per;
  return h("span", { class: "muted" }, limit.kind === "concurrency" ? "in flight" : "per request");
}

/** Bar of used against the amount (a count or USD). Width via CSSOM, allowed by the CSP. */
function useBar(limit, use) {
  const amount = parseFloat(use.amount);
  const used = parseFloat(use.used) || 0;
  const pct = amount > 0 ? Math.min(100, (used / amount) * 100) : (used > 0 ? 100 : 0);
  const fill = h("span", { class: "bar-spent" });
  fill.style.width = pct + "%";
  const level = amount > 0 ? used / amount : (used > 0 ? 1 : 0);
  const text = `used ${amountText(limit, use.used)} of ${amountText(limit, use.amount)}` + (limit.kind === "usd" ? "" : ` ${limit.kind}`);
  return h("div", {
    class: "bar" + (level >= 1 ? " bar-full" : level >= 0.8 ? " bar-high" : ""),
    role: "img", "aria-label": text, title: text,
  }, fill);
}

function useCell(limit) {
  const uses = [...(limit.instances || [])].sort((a, b) => b.percent - a.percent);
  if (!uses.length) return h("span", { class: "muted" }, "nothing counted in this window");
  const wildcard = Object.values(limit.selector || {}).includes("*");
  const shown = uses.slice(0, MAX_INSTANCES).map((u) => {
    const instance = pairs(u.instance);
    return h("div", { class: "limit-use", "data-instance": instance },
      wildcard && instance ? h("div", { class: "muted" }, instance) : null,
      useBar(limit, u),
      h("div", { class: "use" },
        h("span", { "data-testid": "used" }, amountText(limit, u.used)),
        " of ", amountText(limit, u.amount),
        h("span", { class: "muted" }, ` · ${u.percent}%`)));
  });
  const more = uses.length - shown.length;
  return [shown, more > 0 ? h("div", { class: "muted" }, `and ${more} more`) : null];
}

/** The section: `rows` is loadLimits()'s answer (rows, or the error that came instead). */
export function limitsSection(rows, ctx, refusals = new Map()) {
  const messages = h("div", { class: "messages" });
  const head = (count) => h("div", { class: "page-head" }, h("h2", {}, "Rate limits"),
    count === null ? null : h("span", { class: "muted" }, `${count} ${count === 1 ? "limit" : "limits"}`));
  if (rows instanceof Error) {
    flash = null;
    return h("section", { class: "limits", "data-testid": "limits-section" },
      head(null), notice(`Rate limits: ${rows.message}`));
  }
  if (flash) messages.append(notice(flash, "ok"));
  flash = null;

  const act = acting(ctx, messages, (done) => { flash = done; });

  const button = (label, handler) => h("button", { type: "button", class: "small", on: { click: handler } }, label);
  const trs = rows.map((l) => {
    const name = l.name || l.id;
    const usdLimit = l.kind === "usd";
    return h("tr", { "data-limit": l.id },
      h("td", { class: "name" }, h("strong", {}, name), name !== l.id ? h("div", { class: "muted mono" }, l.id) : null,
        h("div", { class: "muted" }, l.label)),
      h("td", {}, l.kind),
      h("td", { class: "num" }, h("span", { "data-testid": "amount" }, amountText(l, l.amount))),
      h("td", {}, perText(l)),
      h("td", {}, useCell(l), refusedNote(refusals.get(`rate_limit|${l.id}`), "rate limit",
        Object.values(l.selector || {}).includes("*"))),
      h("td", {}, h("span", { class: "badge" + (l.on_exceed === "raise" ? "" : " warn"),
        title: l.on_exceed === "raise" ? "refused (429) when over" : "waits for room when over" }, l.on_exceed)),
      h("td", {}, h("div", { class: "actions" },
        button("Change amount", async () => {
          const value = await promptDialog(`Change the amount of ${name}`,
            usdLimit ? "New amount (USD)" : `New amount (${l.kind})`, l.amount,
            "Takes effect now; what this window counted so far is kept.");
          if (value === null) return;
          if (!(usdLimit ? USD : COUNT).test(value)) {
            messages.textContent = "";
            messages.append(notice(`"${value}" is not an amount: write it like ${usdLimit ? "5 or 2.50" : "60"}`));
            return;
          }
          act(() => patch(path`/limits/${l.id}`, { amount: value }),
            `${name}: amount now ${amountText(l, value)}${l.per ? " per " + l.per : ""}`);
        }),
        button("Delete", async () => {
          if (await confirmDialog(`Delete ${name}?`,
            "Requests stop being checked against it, and what it counted goes. Requests in flight end as usual.",
            "Delete", true)) {
            act(() => del(path`/limits/${l.id}`), `${name} deleted`);
          }
        }))));
  });
  return h("section", { class: "limits", "data-testid": "limits-section" },
    head(rows.length),
    messages,
    table(["Limit", "Kind", "Amount", "Per", "Use", "On exceed", ""], trs, { "data-testid": "limits" }));
}
