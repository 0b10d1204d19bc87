// Modal dialogs (<dialog>, no window.confirm) and the one-time secret panel.
import { h, notice } from "./dom.js";

function modal(title, body, buttons) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "modal", "aria-label": title });
    const form = h("form", { method: "dialog" },
      h("h2", {}, title),
      body,
      h("div", { class: "actions" }, buttons.map(([label, value, cls]) =>
        h("button", { type: value === "ok" ? "submit" : "button", value, class: cls || "", dataset: { answer: value },
          on: value === "ok" ? {} : { click: () => dialog.close(value) } }, label))));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      dialog.close("ok");
    });
    dialog.appendChild(form);
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok");
      dialog.remove();
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    const input = dialog.querySelector("input");
    (input || dialog.querySelector("button[value=ok]")).focus();
  });
}

/** Ask before a change; resolves true on OK. */
export function confirmDialog(title, message, okLabel = "OK", danger = false) {
  return modal(title, h("p", {}, message), [
    ["Cancel", "cancel", "secondary"],
    [okLabel, "ok", danger ? "danger" : "primary"],
  ]);
}

/** Ask for one value; resolves the text, or null when cancelled. */
export async function promptDialog(title, label, value, hint) {
  const input = h("input", { type: "text", name: "value", value: value ?? "", required: true, autocomplete: "off",
    inputmode: "decimal" });
  const ok = await modal(title, h("label", { class: "field" }, h("span", {}, label), input, hint ? h("small", {}, hint) : null), [
    ["Cancel", "cancel", "secondary"],
    ["Save", "ok", "primary"],
  ]);
  return ok ? input.value.trim() : null;
}

/** A key's secret, shown once, with a copy button. */
export function secretPanel(title, secret, onClose) {
  const code = h("code", { class: "secret", "data-testid": "secret" }, secret);
  const copy = h("button", { type: "button", class: "secondary", on: { click: async () => {
    try {
      await navigator.clipboard.writeText(secret);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy it";
    }
  } } }, "Copy");
  const panel = h("section", { class: "card secret-panel", role: "status" },
    h("h2", {}, title),
    h("p", {}, "This secret is shown once: store it now. The gateway keeps only its hash."),
    h("div", { class: "secret-row" }, code, copy),
    h("button", { type: "button", class: "secondary", on: { click: () => { panel.remove(); onClose?.(); } } }, "Done"));
  return panel;
}

/** A page's change: clear its messages, mark the page busy, run it; on success tell
 *  ``remember`` what it did and what it answered (a page shows it once after it reloads its
 *  data) and re-render, else show the error. */
export function acting(ctx, messages, remember) {
  return async function act(run, done) {
    messages.textContent = "";
    const failed = ctx.busy();
    try {
      remember(done, await run());
      ctx.rerender();
    } catch (err) {
      messages.append(notice(err.message));
      failed();
      messages.scrollIntoView?.({ block: "nearest" });
    }
  };
}
