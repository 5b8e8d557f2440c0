// Sites, hosts, apps and instances: roles, epochs, health, pids, restarts,
// last exits, and which instance is primary since when. Roles and health
// are written out with a symbol, never shown by colour alone.

import { WITH_PRIMARY, ago, clock, h, on, section, state } from "../app.js";

const ROLE_SYMBOL = {
  primary: "★",
  backup: "◐",
  standby: "○",
  active: "●",
  free: "◇",
  busy: "◆",
  stopped: "■",
  failed: "✖",
  fenced: "⊘",
};
const HEALTH_SYMBOL = { healthy: "✓", unhealthy: "✗", unknown: "?" };

const root = section("status", "Apps and instances");
const hostsEl = h("div", { class: "hosts" });
const appsEl = h("div", { class: "apps" });
root.append(hostsEl, appsEl);

/** When `app`'s current primary took the role: its last serving (or promoted) event. */
function primarySince(app) {
  if (!app.primary) return null;
  for (let i = state.events.length - 1; i >= 0; i -= 1) {
    const e = state.events[i];
    if (e.app !== app.name || e.instance !== app.primary) continue;
    if (e.kind === "serving" || e.kind === "promoted") return e;
  }
  return null;
}

function roleCell(inst, app) {
  const symbol = ROLE_SYMBOL[inst.role] || "·";
  const text = `${symbol} ${inst.role}${inst.promoting ? " (promoting…)" : ""}`;
  return h("td", { "data-label": "role", class: `role role-${inst.role}`, "data-role": inst.role },
    text, app.primary === inst.id ? h("span", { class: "sr" }, " (acknowledged)") : null);
}

function healthCell(inst) {
  const symbol = HEALTH_SYMBOL[inst.health] || "?";
  return h("td", { "data-label": "health", class: `health health-${inst.health}`, title: inst.health_detail || "" },
    `${symbol} ${inst.health}`, inst.crash_looping ? " · crash-looping" : "",
    inst.health_detail ? h("div", { class: "detail" }, inst.health_detail) : null);
}

function instanceRow(app, inst, hostsByName) {
  const host = hostsByName.get(inst.host);
  return h("tr", { "data-app": app.name, "data-instance": inst.id, class: app.primary === inst.id ? "is-primary" : "" },
    h("th", { scope: "row", "data-label": "instance" }, `${app.name}/${inst.id}`),
    h("td", { "data-label": "host" }, inst.host, host ? h("span", { class: "muted" }, ` (${host.site})`) : null),
    roleCell(inst, app),
    h("td", { "data-label": "epoch", class: "num" }, inst.epoch ?? "–"),
    healthCell(inst),
    h("td", { "data-label": "pid", class: "num pid" }, inst.pid ?? "–"),
    h("td", { "data-label": "restarts", class: "num" }, inst.restarts ?? "–"),
    h("td", { "data-label": "last exit", class: "exit" }, inst.last_exit ?? "–"));
}

function appCard(app, hostsByName) {
  const since = primarySince(app);
  const primaryLine = app.primary
    ? h("p", { class: "primary-line", "data-primary": app.primary },
      `★ primary: ${app.name}/${app.primary}`,
      since ? ` since ${clock(since.t_ms)} (${ago(since.t_ms)})` : "",
      ` · epoch ${app.epoch}`)
    : h("p", { class: "primary-line", "data-primary": "" },
      WITH_PRIMARY.includes(app.ha) ? "⚠ no acknowledged primary" : `no primary role (${app.ha})`);
  const readOnly = app.read_only
    ? h("p", { class: "read-only", "data-read-only": app.read_only.site }, `⚠ read-only: ${app.read_only.reason} (pinned to the active site; \`tandem site promote\` moves it)`)
    : null;
  const sw = app.switchover
    ? h("p", { class: "switchover" }, `⇄ switchover under way to ${app.name}/${app.switchover.to} (intent ${app.switchover.intent})`)
    : null;
  return h("article", { class: "app", "data-app": app.name },
    h("h3", {}, app.name, h("span", { class: "muted" }, ` · ${app.ha}`)),
    primaryLine,
    readOnly,
    sw,
    app.reason ? h("p", { class: "reason muted" }, `why: ${app.reason}`) : null,
    h("table", { class: "instances" },
      h("thead", {}, h("tr", {},
        ["instance", "host", "role", "epoch", "health", "pid", "restarts", "last exit"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, app.instances.map((i) => instanceRow(app, i, hostsByName)))));
}

function hostsList(doc) {
  const sites = new Map();
  for (const host of doc.hosts || []) {
    if (!sites.has(host.site)) sites.set(host.site, []);
    sites.get(host.site).push(host);
  }
  const judged = new Map((doc.sites || []).map((s) => [s.name, s]));
  const siteLabel = (site) => {
    const s = judged.get(site);
    if (!s) return `site ${site}: `;
    const role = s.declared_role && s.declared_role !== s.role ? `${s.role}, declared ${s.declared_role}` : s.role;
    const why = s.failed ? ` (${s.failed})` : "";
    return `site ${site} (${role}, ${s.state}${why}): `;
  };
  return h("ul", { class: "sites" }, [...sites.entries()].map(([site, hosts]) =>
    h("li", { "data-site": site, "data-site-state": judged.get(site)?.state ?? "", "data-site-role": judged.get(site)?.role ?? "" },
      h("strong", {}, siteLabel(site)),
      hosts.map((host) => h("span", { class: "host", "data-host": host.name, "data-up": host.up ? "1" : "0" },
        `${host.up ? "▲ up" : "▼ down"} ${host.name} (${host.address})`,
        host.lease_ttl_ms ? h("span", { class: "muted" }, ` lease ${host.lease_ttl_ms} ms`) : null)))));
}

function render() {
  const doc = state.status;
  if (!doc) {
    hostsEl.replaceChildren();
    appsEl.replaceChildren(h("p", { class: "muted" }, "no status yet"));
    return;
  }
  const hostsByName = new Map((doc.hosts || []).map((x) => [x.name, x]));
  hostsEl.replaceChildren(hostsList(doc));
  appsEl.replaceChildren(...doc.apps.map((a) => appCard(a, hostsByName)));
}

on("status", render);
// "since" is read from the log, which may arrive after the status.
on("events", () => state.status && render());
render();
