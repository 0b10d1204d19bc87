// The dashboard: one page, hash routes (#/overview, #/budgets, #/usage, #/keys, #/requests, #/alerts).
import { loadSession, logout, ApiError } from "./api.js";
import { h, clear, notice } from "./dom.js";
import * as overview from "./pages/overview.js";
import * as budgets from "./pages/budgets.js";
import * as usage from "./pages/usage.js";
import * as keys from "./pages/keys.js";
import * as requests from "./pages/requests.js";
import * as alerts from "./pages/alerts.js";

const PAGES = { overview, budgets, usage, keys, requests, alerts };
const main = document.getElementById("main");
let generation = 0;

/** "#/usage?by=model" -> ["usage", URLSearchParams("by=model")] */
export function currentRoute() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const [name, q = ""] = raw.split("?");
  return [PAGES[name] ? name : "overview", new URLSearchParams(q)];
}

/** Change the hash's query (the page's filters) without leaving the page. */
export function setQuery(params) {
  const [name] = currentRoute();
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const s = q.toString();
  const target = "#/" + name + (s ? "?" + s : "");
  if (window.location.hash === target) render();
  else window.location.hash = target;
}

/** A change is under way: the page is not ready until it re-renders (or the change failed:
 * call the returned function). */
function busy() {
  const was = main.dataset.ready;
  const mine = generation;
  delete main.dataset.ready;
  return () => {
    if (mine === generation && was) main.dataset.ready = was;
  };
}

async function render() {
  const [name, params] = currentRoute();
  const mine = ++generation;
  delete main.dataset.ready; // set again when this page has its data (tests wait for it)
  for (const link of document.querySelectorAll("nav a[data-route]")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.classList.remove("nav-open");
  document.querySelector(".nav-toggle")?.setAttribute("aria-expanded", "false");
  const page = PAGES[name];
  document.title = `${page.TITLE} · spendgate`;
  const view = h("div", { class: "page", "data-page": name, "aria-busy": "true" });
  clear(main).appendChild(view);
  try {
    await page.render(view, params, { stale: () => mine !== generation, rerender: render, setQuery, busy });
  } catch (err) {
    if (mine !== generation) return;
    if (!(err instanceof ApiError && err.status === 401)) {
      view.appendChild(notice(err.message || String(err)));
      console.error(err);
    }
  } finally {
    view.setAttribute("aria-busy", "false");
    if (mine === generation) main.dataset.ready = name;
  }
}

function setUpNav() {
  const toggle = document.querySelector(".nav-toggle");
  toggle.addEventListener("click", () => {
    const open = document.body.classList.toggle("nav-open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  document.getElementById("logout").addEventListener("click", () => logout());
  document.getElementById("refresh").addEventListener("click", () => render());
}

async function start() {
  setUpNav();
  try {
    await loadSession();
  } catch {
    return; // on to the login page
  }
  window.addEventListener("hashchange", render);
  if (!window.location.hash) window.history.replaceState(null, "", "#/overview");
  await render();
}

start();
