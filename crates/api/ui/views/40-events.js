// The event log, newest first, live, with filters: kind, app, free text.

import { clock, h, on, section, state } from "../app.js";

/** Rows shown at most (the newest matching ones). */
const MAX_ROWS = 300;
/** The kinds known when this was written; any other kind seen in the log joins the list. */
const KINDS = ["promoted", "serving", "demoted", "primary-failed", "instance-exited", "instance-started",
  "health-changed", "crash-loop", "host", "no-candidate", "intent", "controller", "maintenance", "fence",
  "webhook", "link", "admin-data", "site"];

const root = section("events", "Event log");
const kindSelect = h("select", { id: "filter-kind", "aria-label": "kind" },
  h("option", { value: "" }, "every kind"), KINDS.map((k) => h("option", { value: k }, k)));
const appSelect = h("select", { id: "filter-app", "aria-label": "app" }, h("option", { value: "" }, "every app"));
const text = h("input", { id: "filter-text", type: "search", placeholder: "text…", "aria-label": "text" });
const count = h("span", { class: "muted", id: "events-count" });
const body = h("tbody", {});
root.append(
  h("div", { class: "filters" }, h("label", {}, "kind ", kindSelect), h("label", {}, "app ", appSelect),
    h("label", {}, "search ", text), count),
  h("table", { class: "events" },
    h("thead", {}, h("tr", {}, ["#", "time", "kind", "app", "instance", "epoch", "what happened"].map((c) => h("th", { scope: "col" }, c)))),
    body));

function matches(e, kind, app, needle) {
  if (kind && e.kind !== kind) return false;
  if (app && e.app !== app) return false;
  if (!needle) return true;
  const hay = `${e.kind} ${e.app || ""} ${e.instance || ""} ${e.message} ${e.reason || ""}`.toLowerCase();
  return hay.includes(needle);
}

function row(e) {
  return h("tr", { "data-seq": e.seq, "data-kind": e.kind },
    h("td", { "data-label": "#", class: "num" }, e.seq),
    h("td", { "data-label": "time" }, clock(e.t_ms)),
    h("td", { "data-label": "kind" }, h("code", {}, e.kind)),
    h("td", { "data-label": "app" }, e.app || "–"),
    h("td", { "data-label": "instance" }, e.instance || "–"),
    h("td", { "data-label": "epoch", class: "num" }, e.epoch ?? "–"),
    h("td", { "data-label": "what", class: "message" }, e.message));
}

function fillKinds() {
  const have = new Set([...kindSelect.options].map((o) => o.value));
  for (const e of state.events) {
    if (!have.has(e.kind)) {
      have.add(e.kind);
      kindSelect.append(h("option", { value: e.kind }, e.kind));
    }
  }
}

function fillApps() {
  const apps = new Set((state.status ? state.status.apps : []).map((a) => a.name));
  for (const e of state.events) if (e.app) apps.add(e.app);
  const have = new Set([...appSelect.options].map((o) => o.value));
  for (const a of [...apps].sort()) if (!have.has(a)) appSelect.append(h("option", { value: a }, a));
}

function render() {
  fillApps();
  fillKinds();
  const kind = kindSelect.value;
  const app = appSelect.value;
  const needle = text.value.trim().toLowerCase();
  const rows = [];
  for (let i = state.events.length - 1; i >= 0 && rows.length < MAX_ROWS; i -= 1) {
    const e = state.events[i];
    if (matches(e, kind, app, needle)) rows.push(row(e));
  }
  body.replaceChildren(...rows);
  count.textContent = `${rows.length} shown of ${state.events.length}`;
}

for (const el of [kindSelect, appSelect]) el.addEventListener("change", render);
text.addEventListener("input", render);
on("events", render);
on("status", fillApps);
render();
