// Operator actions: switchover (optionally to a named instance),
// maintenance on/off, fencing a host. Each asks for confirmation first and
// shows the outcome, or the API's refusal sentence.

import { WITH_PRIMARY, api, confirmAction, h, on, refreshStatus, section, state } from "../app.js";

const root = section("actions", "Actions");

const appSelect = h("select", { id: "action-app", "aria-label": "app" });
const toSelect = h("select", { id: "action-to", "aria-label": "switch over to" });
const hostSelect = h("select", { id: "action-host", "aria-label": "host" });
const result = h("output", { id: "action-result", "aria-live": "polite" });
const busy = new Set();

const buttons = {
  switchover: h("button", { id: "do-switchover", type: "button" }, "⇄ switchover"),
  maintOn: h("button", { id: "do-maintenance-on", type: "button" }, "‖ maintenance on"),
  maintOff: h("button", { id: "do-maintenance-off", type: "button" }, "▶ maintenance off"),
  fence: h("button", { id: "do-fence", type: "button", class: "danger" }, "⊘ fence host"),
};

root.append(
  h("div", { class: "action-row" },
    h("label", {}, "app ", appSelect),
    h("label", {}, "to ", toSelect),
    buttons.switchover, buttons.maintOn, buttons.maintOff),
  h("div", { class: "action-row" },
    h("label", {}, "host ", hostSelect),
    buttons.fence),
  result);

function fill(select, options, keep) {
  const current = keep ?? select.value;
  const values = options.map((o) => o.value);
  const same = select.options.length === options.length &&
    [...select.options].every((o, i) => o.value === values[i] && o.textContent === options[i].label);
  if (!same) select.replaceChildren(...options.map((o) => h("option", { value: o.value }, o.label)));
  if (values.includes(current)) select.value = current;
}

function render() {
  const doc = state.status;
  const apps = doc ? doc.apps : [];
  fill(appSelect, apps.map((a) => ({ value: a.name, label: `${a.name} (${a.ha})` })));
  const app = apps.find((a) => a.name === appSelect.value);
  fill(toSelect, [{ value: "", label: "best backup" }].concat(
    (app ? app.instances : []).map((i) => ({ value: i.id, label: `${i.id} (${i.role})` }))));
  fill(hostSelect, (doc ? doc.hosts || [] : []).map((x) => ({ value: x.name, label: `${x.name} (${x.up ? "up" : "down"})` })));
  const canSwitch = app && WITH_PRIMARY.includes(app.ha);
  buttons.switchover.disabled = !canSwitch || busy.has("switchover");
  toSelect.disabled = !canSwitch;
  buttons.maintOn.disabled = !app || busy.has("maintenance");
  buttons.maintOff.disabled = !app || busy.has("maintenance");
  buttons.fence.disabled = !hostSelect.value || busy.has("fence");
}

function show(kind, text) {
  result.dataset.outcome = kind; // "ok", "pending", "refused"
  const symbol = { ok: "✓", pending: "…", refused: "✗" }[kind] || "";
  result.textContent = `${symbol} ${text}`;
}

async function run(kind, title, text, okLabel, call) {
  if (!(await confirmAction(title, text, okLabel))) {
    show("pending", `${title}: cancelled`);
    return;
  }
  busy.add(kind);
  render();
  show("pending", `${title}: under way…`);
  try {
    const { status, doc } = await call();
    const message = (doc && doc.message) || "";
    if (status === 202) show("pending", `${title}: accepted, still under way (${doc.outcome})${message ? `: ${message}` : ""}`);
    else show("ok", `${title}: done${message ? `: ${message}` : ""}`);
  } catch (e) {
    show("refused", `${title}: refused (${e.status || "no answer"}): ${e.message}`);
  } finally {
    busy.delete(kind);
    render();
    refreshStatus();
  }
}

appSelect.addEventListener("change", render);
hostSelect.addEventListener("change", render);

buttons.switchover.addEventListener("click", () => {
  const app = appSelect.value;
  const to = toSelect.value;
  const target = to ? `to ${app}/${to}` : "to the best backup";
  run("switchover", `Switchover of ${app}`,
    `Demote the primary of ${app} and promote ${target}? Clients reconnect to the new primary.`, "switch over",
    () => api(`/v1/apps/${encodeURIComponent(app)}/switchover`, { method: "POST", body: to ? { to } : {} }));
});

for (const [button, onOff] of [[buttons.maintOn, true], [buttons.maintOff, false]]) {
  button.addEventListener("click", () => {
    const app = appSelect.value;
    run("maintenance", `Maintenance ${onOff ? "on" : "off"} for ${app}`,
      onOff
        ? `While ${app} is in maintenance the controller changes none of its roles: a failed primary is NOT replaced. Turn maintenance on?`
        : `The controller takes care of ${app} again. Turn maintenance off?`,
      onOff ? "maintenance on" : "maintenance off",
      () => api(`/v1/apps/${encodeURIComponent(app)}/maintenance`, { method: "POST", body: { on: onOff } }));
  });
}

buttons.fence.addEventListener("click", () => {
  const host = hostSelect.value;
  run("fence", `Fence host ${host}`,
    `Run the fence device of ${host}: it powers the host off or cuts it off, and its primaries are replaced. Fence ${host}?`,
    "fence", () => api(`/v1/hosts/${encodeURIComponent(host)}/fence`, { method: "POST" }));
});

on("status", render);
render();
