// The link graph: every link of the topology, each edge's state for each
// instance it goes from (from GET /v1/links), refreshed with the status.
// States are written out with a symbol, never shown by colour alone.

import { api, h, on, section } from "../app.js";

const STATE_SYMBOL = { up: "▲", down: "▼", unknown: "?" };

const root = section("links", "Links");
const body = h("div", { class: "links" });
root.append(body);
root.hidden = true;

let inFlight = false;
let again = false;

function stateText(state) {
  return `${STATE_SYMBOL[state] || "?"} ${state}`;
}

/** One edge: its name, ends, cardinality, and a row per instance. */
function linkTable(link) {
  const rows = link.instances.map((i) =>
    h("tr", {
      "data-link": link.name, "data-instance": i.instance, "data-state": i.state,
      ...(i.active === undefined ? {} : { "data-active": String(i.active) }),
    },
      h("th", { scope: "row", "data-label": "instance" }, `${link.from}/${i.instance}`),
      h("td", { "data-label": "state", class: `link-state link-${i.state}` },
        stateText(i.state) + (i.active === undefined ? "" : i.active ? " · active" : " · inactive")),
      h("td", { "data-label": "targets" },
        i.targets.length === 0
          ? "–"
          : i.targets.map((t) => h("span", {
            class: `target link-${t.state}`,
            title: [t.detail, t.cert_not_after ? `certificate not after ${t.cert_not_after}` : ""]
              .filter(Boolean).join(" · "),
          }, `${t.target} ${STATE_SYMBOL[t.state] || "?"}${t.cert_expiring ? " ⚠ certificate expires soon" : ""} `))),
      h("td", { "data-label": "why", class: "detail" }, i.detail)));
  const down = link.instances.filter((i) => i.state === "down").length;
  const summary = down === 0 ? "" : ` · ${down} down`;
  return h("article", { class: "link", "data-link": link.name },
    h("h3", {}, `${link.from} → ${link.to}`,
      h("span", { class: "muted" },
        ` · ${link.name} · ${link.cardinality}${link.required ? "" : " (never degrades)"}`
        + `${link.to_kind === "endpoint" ? " · endpoint" : ""}${link.tls ? " · tls" : ""}`
        + `${link.exclusive ? ` · exclusive group ${link.exclusive}` : ""}${summary}`)),
    h("table", { class: "instances" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "from"), h("th", { scope: "col" }, "state"),
        h("th", { scope: "col" }, "targets"), h("th", { scope: "col" }, "why"))),
      h("tbody", {}, rows)));
}

async function refresh() {
  if (inFlight) {
    again = true;
    return;
  }
  inFlight = true;
  try {
    const { doc } = await api("/v1/links");
    root.hidden = doc.links.length === 0;
    body.replaceChildren(...doc.links.map(linkTable));
  } catch (e) {
    // The status view reports an API that cannot be read; a 401 asks for
    // a token. Nothing more to say here.
  } finally {
    inFlight = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

on("status", refresh);
