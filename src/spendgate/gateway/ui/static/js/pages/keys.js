// #/keys: list, create (the secret shown once), disable/enable, rotate, delete; expiry.
import { get, post, del, path } from "../api.js";
import { h, usd, when, table, bar, notice } from "../dom.js";
import { acting, confirmDialog, secretPanel } from "../ui.js";

export const TITLE = "Keys";
const FIELDS = ["user", "team", "project", "customer"];
let shown = null; // {title, secret}: shown once, on the render after the change
let flash = null; // what the last change did, shown once after the page reloads its data

const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

function createForm(messages, ctx) {
  const field = (label, control, hint) => h("label", { class: "field" }, h("span", {}, label), control, hint ? h("small", {}, hint) : null);
  const input = (name, attrs) => h("input", { name, id: "key-" + name, autocomplete: "off", ...(attrs || {}) });
  const form = h("form", { class: "card", id: "create-key", "data-testid": "create-key" },
    h("h2", {}, "Create a key"),
    h("div", { class: "form-grid" },
      field("Name", input("name")),
      ...FIELDS.map((f) => field(f[0].toUpperCase() + f.slice(1), input(f))),
      field("Tags", input("tags"), "comma-separated"),
      field("Models", input("models"), "globs, comma-separated; empty: all"),
      field("Expires", input("expires_at", { type: "datetime-local" }), "your local time; empty: never"),
      field("Own budget (USD)", input("budget", { inputmode: "decimal", pattern: "[0-9]+(\\.[0-9]+)?" }), "optional"),
      field("Budget window", h("select", { name: "window", id: "key-window" },
        ["month", "week", "day"].map((w) => h("option", { value: w }, w))))),
    h("button", { type: "submit", class: "primary" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    const body = {};
    for (const name of ["name", ...FIELDS]) if (values[name].trim()) body[name] = values[name].trim();
    if (list(values.tags).length) body.tags = list(values.tags);
    if (list(values.models).length) body.models = list(values.models);
    if (values.expires_at) body.expires_at = new Date(values.expires_at).toISOString();
    if (values.budget.trim()) {
      body.budget = values.budget.trim();
      body.window = values.window;
    }
    await acting(ctx, messages, (_, key) => {
      shown = { title: `Key ${key.name || key.id} created`, secret: key.secret };
    })(() => post("/keys", body));
  });
  return form;
}

export async function render(view, _params, ctx) {
  const { data } = await get("/keys");
  if (ctx.stale()) return;
  const messages = h("div", { class: "messages" });
  if (flash) messages.append(notice(flash, "ok"));
  flash = null;
  view.append(h("div", { class: "page-head" }, h("h1", {}, "Keys"), h("span", { class: "muted" }, `${data.length} keys`)), messages);
  if (shown) {
    view.append(secretPanel(shown.title, shown.secret));
    shown = null;
  }
  // `after`: a note to show once the list is back, or what to do with the answer (a rotation's secret)
  const act = acting(ctx, messages, (after, result) => {
    if (typeof after === "function") after(result);
    else flash = after ?? null;
  });
  const rows = data.map((k) => {
    const name = k.name || k.id;
    const button = (label, cls, handler) => h("button", { type: "button", class: "small " + (cls || ""), on: { click: handler } }, label);
    return h("tr", { "data-key": k.id },
      h("td", { class: "name" }, h("strong", {}, name), h("div", { class: "muted mono" }, k.id),
        h("div", { class: "muted mono", title: "the secret's first characters" }, k.hint)),
      h("td", {}, h("span", { class: "badge " + k.state }, k.state)),
      h("td", { class: "attrs" },
        FIELDS.filter((f) => k[f]).map((f) => h("div", {}, h("span", { class: "muted" }, f + " "), h("span", {}, k[f]))),
        (k.tags || []).length ? h("div", {}, h("span", { class: "muted" }, "tags "), k.tags.map((t, i) => [i ? ", " : "", h("span", { class: "tag" }, t)])) : null,
        h("div", {}, h("span", { class: "muted" }, "models "), (k.models || []).length ? k.models.join(", ") : "all")),
      h("td", {}, k.budget ? [bar(k.budget.spent, k.budget.reserved, k.budget.limit), h("div", { class: "muted" }, `${usd(k.budget.spent)} of ${usd(k.budget.limit)}`)]
        : h("span", { class: "muted" }, "none")),
      h("td", {}, k.expires_at ? when(k.expires_at) : h("span", { class: "muted" }, "never")),
      h("td", {}, when(k.created_at)),
      h("td", {}, h("div", { class: "actions" },
        k.disabled
          ? button("Enable", "", () => act(() => post(path`/keys/${k.id}/enable`), `${name} enabled: its requests are served again`))
          : button("Disable", "", async () => {
            if (await confirmDialog(`Disable ${name}?`, "Requests with this key are refused (401) until you enable it again.", "Disable", true)) {
              act(() => post(path`/keys/${k.id}/disable`), `${name} disabled: its requests are refused (401)`);
            }
          }),
        button("Rotate", "", async () => {
          if (await confirmDialog(`Rotate ${name}?`, "A new secret is made; the old one stops working now.", "Rotate", true)) {
            act(() => post(path`/keys/${k.id}/rotate`), (key) => { shown = { title: `New secret for ${name}`, secret: key.secret }; });
          }
        }),
        button("Delete", "", async () => {
          if (await confirmDialog(`Delete ${name}?`, "The key stops working for good.", "Delete", true)) {
            act(() => del(path`/keys/${k.id}`), `${name} deleted`);
          }
        }))));
  });
  view.append(
    table(["Key", "State", "Attributes", "Own budget", "Expires", "Created", ""], rows, { "data-testid": "keys" },
      "No keys yet: create one below."),
    h("div", { class: "spacer" }), createForm(messages, ctx));
}
