// tandem's dashboard: what every view shares.
//
// - the operator's token (sessionStorage), sent as `Authorization: Bearer`
//   on every API call; a 401 asks for it again;
// - `api()`: one call, JSON in and out, errors as the API's sentence;
// - the event log: loaded once, then followed live (server-sent events
//   read with fetch() so the request can carry the token), resumed with
//   `since=` after a drop;
// - the status: fetched at start, again (debounced) after every event, and
//   every few seconds as a safety net;
// - a tiny pub/sub: views call `on("status" | "events", fn)`.
//
// A view is a module under /ui/views/ that imports from here and calls
// `section()` to get its place on the page; index.html loads every view.

const TOKEN_KEY = "tandem.token";
const STATUS_DEBOUNCE_MS = 50;
const STATUS_POLL_MS = 5000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;
/** Events kept in memory (the log view shows them, the timeline reads them). */
export const MAX_EVENTS = 5000;

/** HA modes whose apps have a primary (to switch over). */
export const WITH_PRIMARY = ["warm-standby", "hot-standby", "cold-standby", "singleton"];

/** What the views read. */
export const state = {
  status: null, // the last StatusDoc
  events: [], // the event log, oldest first
  lastSeq: null, // the newest event seen
};

const listeners = new Map();

/** Calls `fn(value)` on every `name` ("status", "events", "event", "token"). */
export function on(name, fn) {
  if (!listeners.has(name)) listeners.set(name, []);
  listeners.get(name).push(fn);
}

function emit(name, value) {
  for (const fn of listeners.get(name) || []) {
    try {
      fn(value);
    } catch (e) {
      console.error(`view failed on ${name}:`, e);
    }
  }
}

// ---- small DOM helpers ----

/** `h("td", {class: "x"}, "text", child)`: an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A titled section of the page for a view, in load order. */
export function section(id, title) {
  const el = h("section", { id, class: "view", "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title));
  document.getElementById("views").append(el);
  return el;
}

/** "07:24:56" (local time) of a time in ms since the Unix epoch. */
export function clock(tMs) {
  if (tMs == null) return "";
  const d = new Date(tMs);
  return d.toLocaleTimeString([], { hour12: false });
}

/** "3 s ago", "2 min ago". */
export function ago(tMs) {
  if (tMs == null) return "";
  const s = Math.max(0, Math.round((Date.now() - tMs) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

// ---- the token ----

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lives until the page goes.
  }
  document.getElementById("logout").hidden = !value;
  emit("token", value);
  restartStream();
  refreshStatus();
}

let tokenWaiters = [];

/** Shows the login dialog with `reason`; resolves once a token is entered. */
function askToken(reason) {
  const dialog = document.getElementById("login");
  document.getElementById("login-reason").textContent = reason || "This API needs a token.";
  if (!dialog.open) {
    document.getElementById("login-token").value = "";
    dialog.showModal();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

function setupLogin() {
  const dialog = document.getElementById("login");
  const form = document.getElementById("login-form");
  form.addEventListener("submit", () => {
    const value = document.getElementById("login-token").value.trim();
    if (!value) return;
    setToken(value);
    const waiters = tokenWaiters;
    tokenWaiters = [];
    for (const w of waiters) w(value);
  });
  // Escape does not dismiss it: without a token the page has nothing to show.
  dialog.addEventListener("cancel", (e) => e.preventDefault());
  const logout = document.getElementById("logout");
  logout.hidden = !token();
  logout.addEventListener("click", () => {
    // Nothing read with the token stays on the page.
    state.status = null;
    state.events = [];
    state.lastSeq = null;
    emit("status", null);
    emit("events", state.events);
    setToken("");
  });
}

// ---- API calls ----

/** A refused or failed call: `status` (0 if the API was unreachable) and the API's sentence. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

async function errorSentence(res) {
  const text = await res.text().catch(() => "");
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc.error === "string") return doc.error;
  } catch {
    // not JSON: fall through
  }
  return text.trim() || `HTTP ${res.status} ${res.statusText}`;
}

/**
 * Calls the API: `api("/v1/status")`, `api(path, {method: "POST", body})`.
 * Resolves to `{status, doc}`; rejects with an ApiError carrying the API's
 * sentence. A 401 asks for a token (and still rejects).
 */
export async function api(path, { method = "GET", body, signal } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, `the API cannot be reached (${e && e.message ? e.message : e})`);
  }
  if (!res.ok) {
    const sentence = await errorSentence(res);
    if (res.status === 401) askToken(sentence);
    throw new ApiError(res.status, sentence);
  }
  const text = await res.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(res.status, `the API answered something that is not JSON: ${text.slice(0, 80)}`);
  }
  return { status: res.status, doc };
}

// ---- status ----

let statusTimer = null;
let statusInFlight = false;
let statusAgain = false;
let statusLastMs = 0;
/** The notice shows a failed status fetch (cleared by the next success). */
let statusNoticed = false;

/**
 * Fetches the status soon: at once if none was fetched in the last
 * STATUS_DEBOUNCE_MS, else once that much time has passed (a burst of
 * events costs one or two fetches, and the first one is not delayed).
 */
export function refreshStatus() {
  if (statusTimer !== null) return;
  const wait = Math.max(0, statusLastMs + STATUS_DEBOUNCE_MS - Date.now());
  statusTimer = setTimeout(() => {
    statusTimer = null;
    fetchStatus();
  }, wait);
}

async function fetchStatus() {
  if (statusInFlight) {
    statusAgain = true;
    return;
  }
  statusInFlight = true;
  statusLastMs = Date.now();
  try {
    const { doc } = await api("/v1/status");
    state.status = doc;
    document.getElementById("topology").textContent = `${doc.topology} · store ${doc.store}`;
    const stale = document.getElementById("stale");
    stale.hidden = !doc.stale;
    stale.textContent = doc.stale ? `⚠ stale: ${doc.stale_reason || "the store cannot be read"}` : "";
    if (statusNoticed) {
      statusNoticed = false;
      notice("");
    }
    emit("status", doc);
  } catch (e) {
    if (e.status !== 401) {
      statusNoticed = true;
      notice(`status: ${e.message}`);
    }
  } finally {
    statusInFlight = false;
    if (statusAgain) {
      statusAgain = false;
      refreshStatus();
    }
  }
}

// ---- the event log, live ----

function addEvents(events) {
  let added = 0;
  for (const e of events) {
    if (state.lastSeq != null && e.seq <= state.lastSeq) continue;
    state.events.push(e);
    state.lastSeq = e.seq;
    added += 1;
  }
  if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
  return added;
}

let streamAbort = null;
let streamGeneration = 0;

function setLive(text, ok) {
  const el = document.getElementById("live");
  el.textContent = text;
  el.dataset.ok = ok ? "1" : "0";
}

function restartStream() {
  if (streamAbort) streamAbort.abort();
}

/** Reads a text/event-stream body, calling `onMessage({id, event, data})`. */
export async function readEventStream(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let msg = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A lone "\r" at the end may be the first half of "\r\n".
      if (nl === buffer.length - 1 && buffer.endsWith("\r")) break;
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (msg.data.length) onMessage({ id: msg.id, event: msg.event, data: msg.data.join("\n") });
        msg = { id: null, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue; // keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? "" : line.slice(colon + 1);
      if (val.startsWith(" ")) val = val.slice(1);
      if (field === "data") msg.data.push(val);
      else if (field === "event") msg.event = val;
      else if (field === "id") msg.id = val;
    }
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function follow() {
  let delay = RECONNECT_MIN_MS;
  for (;;) {
    const generation = ++streamGeneration;
    streamAbort = new AbortController();
    try {
      if (state.lastSeq != null) {
        // Reconnecting: a log that restarted (a new store) has a newest
        // event older than ours; start again from its beginning.
        const { doc } = await api("/v1/events?limit=1", { signal: streamAbort.signal });
        const newest = doc.events.length ? doc.events[doc.events.length - 1].seq : 0;
        if (newest < state.lastSeq) {
          state.events = [];
          state.lastSeq = null;
          emit("events", state.events);
        }
      }
      if (state.lastSeq == null) {
        // The history first (more than the stream's default backlog).
        const { doc } = await api("/v1/events?limit=1000", { signal: streamAbort.signal });
        if (addEvents(doc.events)) emit("events", state.events);
      }
      const since = state.lastSeq == null ? "" : `&since=${state.lastSeq}&limit=10000`;
      const res = await fetch(`/v1/events?follow=true${since}`, {
        headers: headers({ Accept: "text/event-stream" }),
        signal: streamAbort.signal,
        cache: "no-store",
      });
      if (!res.ok) {
        const sentence = await errorSentence(res);
        if (res.status === 401) {
          setLive("needs a token", false);
          await askToken(sentence);
          continue;
        }
        throw new ApiError(res.status, sentence);
      }
      setLive("● live", true);
      delay = RECONNECT_MIN_MS;
      refreshStatus(); // anything missed while disconnected
      await readEventStream(res.body, (m) => {
        if (m.event !== "event") return;
        let e;
        try {
          e = JSON.parse(m.data);
        } catch {
          return;
        }
        if (addEvents([e])) {
          emit("event", e);
          emit("events", state.events);
          refreshStatus();
        }
      });
      // The server ended the stream (it is stopping): reconnect.
    } catch (e) {
      if (e && e.status === 401) {
        setLive("needs a token", false);
        await new Promise((resolve) => tokenWaiters.push(resolve));
        continue;
      }
      if (!(e && e.name === "AbortError") && generation === streamGeneration) {
        setLive(`○ reconnecting (${e && e.message ? e.message : e})`, false);
      }
    }
    if (streamAbort.signal.aborted) {
      // A new token: start again at once, from the start of the log.
      continue;
    }
    setLive("○ reconnecting…", false);
    await sleep(delay);
    delay = Math.min(delay * 2, RECONNECT_MAX_MS);
  }
}

// ---- notices and confirmation ----

/** A one-line message at the top of the page (replaces the last one). */
export function notice(text) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.hidden = !text;
}

/** Asks the operator to confirm; resolves to true if they did. */
export function confirmAction(title, text, okLabel = "confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

/** Starts the shared loops; called by index.html once every view is loaded. */
export function start() {
  setupLogin();
  fetchStatus();
  setInterval(fetchStatus, STATUS_POLL_MS);
  follow();
}
