// A timeline of failovers and switchovers with their durations, read from
// the event log: a handover starts at the `primary-failed` (or `demoted`)
// event of an app and ends when the promoted instance acknowledges its
// role (`serving` at the promotion's epoch). Plotted as inline SVG (time
// across, duration up, log scale) and listed as text below it.

import { clock, h, on, section, state } from "../app.js";

const SVG = "http://www.w3.org/2000/svg";
const MIN_WIDTH = 300;
const HEIGHT = 180;
const PAD = { left: 56, right: 16, top: 16, bottom: 28 };
/** Handovers plotted (the newest). */
const MAX_SHOWN = 50;

const root = section("timeline", "Failover timeline");
const plot = h("div", { class: "plot" });
const list = h("ol", { class: "handovers", reversed: true });
root.append(plot, list);

/** The handovers in the log, oldest first. */
export function handovers(events) {
  const out = [];
  const open = new Map(); // app -> {start, promoted}
  for (const e of events) {
    if (!e.app) continue;
    const cur = open.get(e.app) || {};
    if (e.kind === "primary-failed" || e.kind === "demoted") {
      if (!cur.start || cur.promoted) open.set(e.app, { start: e });
    } else if (e.kind === "promoted") {
      const start = cur.start && !cur.promoted ? cur.start : null;
      if (start || e.reason === "switchover") open.set(e.app, { start: start || e, promoted: e });
      else open.delete(e.app); // a first start, not a handover
    } else if (e.kind === "serving" && cur.promoted && e.epoch === cur.promoted.epoch) {
      const planned = cur.promoted.reason === "switchover" || cur.start.kind === "demoted";
      out.push({
        app: e.app,
        kind: planned ? "switchover" : "failover",
        from: cur.start.kind === "promoted" ? null : cur.start.instance,
        to: e.instance,
        epoch: e.epoch,
        startMs: cur.start.t_ms,
        endMs: e.t_ms,
        durationMs: e.t_ms - cur.start.t_ms,
        why: cur.start.message,
      });
      open.delete(e.app);
    }
  }
  // Still under way.
  for (const [app, cur] of open) {
    if (!cur.start) continue;
    out.push({ app, kind: "under way", from: cur.start.instance, to: cur.promoted ? cur.promoted.instance : null,
      epoch: cur.promoted ? cur.promoted.epoch : null, startMs: cur.start.t_ms, endMs: null, durationMs: null,
      why: cur.start.message });
  }
  out.sort((a, b) => a.startMs - b.startMs);
  return out;
}

function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmtMs(ms) {
  if (ms == null) return "…";
  return ms < 10000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

function render() {
  const all = handovers(state.events);
  const shown = all.slice(-MAX_SHOWN);
  if (!shown.length) {
    plot.replaceChildren(h("p", { class: "muted" }, "no failover or switchover in the log yet"));
    list.replaceChildren();
    return;
  }
  // Drawn at the plot's width in pixels, so text keeps its size on a phone.
  const WIDTH = Math.max(MIN_WIDTH, Math.round(plot.clientWidth || 640));
  const t0 = shown[0].startMs;
  const t1 = Math.max(Date.now(), shown[shown.length - 1].startMs + 1);
  const maxMs = Math.max(1000, ...shown.map((x) => x.durationMs || 0));
  const x = (t) => PAD.left + ((t - t0) / Math.max(1, t1 - t0)) * (WIDTH - PAD.left - PAD.right);
  const logMax = Math.log10(maxMs);
  const y = (ms) => HEIGHT - PAD.bottom - (Math.log10(Math.max(1, ms)) / logMax) * (HEIGHT - PAD.top - PAD.bottom);

  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "timeline-svg",
    "aria-label": `${shown.length} handover(s): time across, duration up (log scale)` });
  // Axes, with duration gridlines at powers of ten.
  svg.append(s("line", { x1: PAD.left, y1: HEIGHT - PAD.bottom, x2: WIDTH - PAD.right, y2: HEIGHT - PAD.bottom, class: "axis" }));
  for (let p = 1; p <= maxMs; p *= 10) {
    svg.append(s("line", { x1: PAD.left, y1: y(p), x2: WIDTH - PAD.right, y2: y(p), class: "grid" }));
    svg.append(s("text", { x: PAD.left - 6, y: y(p) + 4, "text-anchor": "end", class: "tick" }, fmtMs(p)));
  }
  svg.append(s("text", { x: PAD.left, y: HEIGHT - 8, class: "tick" }, clock(t0)));
  svg.append(s("text", { x: WIDTH - PAD.right, y: HEIGHT - 8, "text-anchor": "end", class: "tick" }, clock(t1)));
  for (const ho of shown) {
    const cx = x(ho.startMs);
    const top = ho.durationMs == null ? PAD.top : y(ho.durationMs);
    const g = s("g", { class: `handover handover-${ho.kind.replace(" ", "-")}` });
    g.append(s("title", {}, `${ho.app}: ${ho.kind} ${ho.from ? `${ho.from} → ` : ""}${ho.to || "?"} at ${clock(ho.startMs)}, ${fmtMs(ho.durationMs)}`));
    g.append(s("line", { x1: cx, y1: HEIGHT - PAD.bottom, x2: cx, y2: top, class: "stem",
      "stroke-dasharray": ho.kind === "under way" ? "3 3" : "none" }));
    // Shape, not colour, tells the kind: circle = failover, square = switchover.
    if (ho.kind === "switchover") g.append(s("rect", { x: cx - 5, y: top - 5, width: 10, height: 10, class: "mark" }));
    else g.append(s("circle", { cx, cy: top, r: 5, class: "mark" }));
    g.append(s("text", { x: cx + 7, y: top + 4, class: "label" }, `${ho.app} ${fmtMs(ho.durationMs)}`));
    svg.append(g);
  }
  plot.replaceChildren(svg, h("p", { class: "legend muted" }, "● failover  ■ switchover  ┆ under way — duration: from the failure (or demotion) to the new primary serving"));

  list.replaceChildren(...all.slice(-MAX_SHOWN).reverse().map((ho) =>
    h("li", { "data-kind": ho.kind, "data-app": ho.app },
      `${clock(ho.startMs)} ${ho.kind === "switchover" ? "■" : "●"} ${ho.app}: ${ho.kind} `,
      ho.from ? `${ho.from} → ` : "", ho.to || "?",
      ho.epoch != null ? ` (epoch ${ho.epoch})` : "",
      `: ${fmtMs(ho.durationMs)}`,
      h("div", { class: "muted detail" }, ho.why))));
}

let resizeTimer = null;
let lastWidth = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (plot.clientWidth !== lastWidth) {
      lastWidth = plot.clientWidth;
      render();
    }
  }, 100);
});
on("events", render);
render();
