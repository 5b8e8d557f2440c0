// tandem-site.js: a browser client that fails over between two sites by
// itself (tandem's "Workspace" deployment: a contact centre in two data
// centres, dc1 active, dc2 spare).
//
// The page is loaded from the local site with the backup site in the query
// string: `http://agents.dc1.example/?site-1=agents.dc2.example`. When the
// local site is in trouble, the library moves the page to the backup site
// itself, logged in again there with a token both sites accept (no
// password typed again), with the same session id, and tells the user why.
//
// Plain JavaScript (ES2017), no build step, no dependencies. Load it as a
// classic script; it defines `window.TandemSite`:
//
//   <script src="/tandem-site.js"></script>
//   <script>
//     TandemSite.start({ hysteresisMs: 3000, onState: (s) => render(s) });
//     form.onsubmit = () => TandemSite.login(user.value, password.value)
//       .catch((e) => show(e.message));
//   </script>
//
// API
// ---
//   TandemSite.start(options) -> Promise<state>
//       Call once. Reads `site-1` and the `#tandem=` fragment (removing the
//       fragment from the address bar), logs in with the carried token (after
//       a move) or the token kept in sessionStorage (after a reload), then
//       watches the site. Resolves with the state once logged in, or once it
//       waits for the user's password (`state.phase === "login"`).
//   TandemSite.login(user, password) -> Promise<state>
//       Logs in with a password (the page's form). Rejects with an Error
//       whose message is the server's sentence (e.g. wrong password).
//   TandemSite.returnToPrevious() -> boolean
//       Moves back to the site the page came from (the banner's "Return to
//       <site>" button calls it); false if there is none to return to.
//   TandemSite.logout()
//       Forgets the token, closes the channel; `state.phase` becomes "login".
//   TandemSite.state() -> a copy of the state:
//       { site, user, session, connected, moved, reason, from, fromSite,
//         backup, phase, trouble, waiting, notice, previousUp, services }
//       site        this site's name, as the server says (e.g. "dc1")
//       user, session  who is logged in; the session id survives a move
//       connected   the real-time channel is up (a message within silenceMs)
//       moved       the page came here by a move; `reason`, `from` (the
//                   host:port it came from) and `fromSite` (its name) say
//                   why and from where
//       backup      the host:port of `site-1`, null if none or refused
//       phase       "starting" | "login" | "ready" | "moving"
//       trouble     the current trouble ("service voice unavailable: ..."),
//                   null if none
//       waiting     why a due move does not happen: "dwell", "no-backup",
//                   "backup-down", or null
//       notice      a message shown in the banner (a refused site-1, a
//                   refused token), null if none
//       previousUp  after a move: the previous site answers its health URL
//       services    { name: {available, detail} } as the server reports them
//
// Options (all optional; times in milliseconds)
//   channel "/rt"           server-sent events: `hello` {site}, `ping`
//                           (every 250 ms), `service` {service, available,
//                           detail}, `unregistered` {detail}
//   login "/login"          POST {user, password} or {token} -> 200
//                           {user, session, token, site}; sets the cookie
//                           the other endpoints need
//   init "/init"            GET once after login
//   register "/register"    POST after init, then every registerEveryMs
//   health "/healthz"       polled on the previous site after a move
//   param "site-1"          the query parameter naming the backup site
//   banner "banner"         the banner element or its id; the library
//                           writes its text into a child marked
//                           `data-tandem-text` and uses a button marked
//                           `data-tandem-return` (both created if absent)
//   onState fn(state)       called after every change
//   hysteresisMs 3000       how long a lost channel or an unavailable
//                           service must last before the page moves
//   minDwellMs 30000        after a move, no automatic move for this long
//   silenceMs 1000          no message for longer = the channel is lost
//   reconnectMs 500         wait before reopening a lost channel
//   registerEveryMs 5000    re-registration period
//   registerRetryMs 1000    retry after a refused registration
//   requestTimeoutMs 3000   bound on login, init and register requests
//   healthEveryMs 1000      how often the previous site is polled
//   probeTimeoutMs 1500     bound on a health poll or the probe of the
//                           backup before a move
//
// When it moves
// -------------
//   - the channel is lost (an error, or no message for > silenceMs)
//     continuously for hysteresisMs (a shorter loss reconnects, no move);
//   - a service is reported unavailable for hysteresisMs;
//   - registration is refused (a non-2xx answer) twice in a row;
//   - initialisation fails at login;
//   - the server reports the endpoint `unregistered`.
// A move is only ever caused by a trouble at the current site: the page
// never moves back because the previous site recovered (that is the user's
// choice, with the Return button), and after a move it does not move again
// by itself within minDwellMs (no ping-pong when both sites are troubled;
// the banner says it waits). Before moving it checks that the backup
// answers (a no-cors fetch of its health URL); if not, it stays and retries.
//
// How it moves
// ------------
//   location.replace(`${scheme}//${backup}${path}?site-1=${this host}` +
//                    `#tandem=${base64url(JSON {token, session, from,
//                    fromSite, reason, at})}`)
// Other query parameters are kept. The fragment is never sent to a server;
// the library on the new page reads it, removes it from the address bar,
// and logs in with the token. A malformed fragment (or one older than 10
// minutes) is ignored with a console warning and the login form is shown;
// a `site-1` that is not host[:port] is refused with a banner message and
// never navigated to.
(function (global) {
  "use strict";

  const TOKEN_KEY = "tandem.token";
  const MOVED_KEY = "tandem.moved";
  const FRAGMENT_KEY = "tandem";
  const MAX_FRAGMENT_CHARS = 8192;
  const MAX_FRAGMENT_AGE_MS = 10 * 60 * 1000;
  const MAX_TOKEN_CHARS = 2048;
  const MAX_REASON_CHARS = 500;
  const MAX_SERVICES = 32;
  const TICK_MS = 100;
  const PROBE_RETRY_MS = 1000;
  const INIT_RETRY_MS = 2000;
  const LOG = "[tandem-site]";

  const DEFAULTS = {
    channel: "/rt",
    login: "/login",
    init: "/init",
    register: "/register",
    health: "/healthz",
    param: "site-1",
    banner: "banner",
    onState: null,
    hysteresisMs: 3000,
    minDwellMs: 30000,
    silenceMs: 1000,
    reconnectMs: 500,
    registerEveryMs: 5000,
    registerRetryMs: 1000,
    requestTimeoutMs: 3000,
    healthEveryMs: 1000,
    probeTimeoutMs: 1500,
  };

  let opts = null;
  const S = {
    phase: "starting",
    site: null,
    user: null,
    session: null,
    token: null,
    connected: false,
    moved: false,
    reason: null,
    from: null,
    fromSite: null,
    movedAt: null,
    backup: null,
    backupNotice: null,
    notice: null,
    movingReason: null,
    lastTroubleText: null,
    waiting: null,
    previousUp: false,
    services: {},
    // name -> {since, detail, immediate}: what may move the page.
    troubles: new Map(),
    registerFailures: 0,
    es: null,
    esCreatedAt: 0,
    lastMessageAt: 0,
    reconnectTimer: null,
    registerTimer: null,
    initTimer: null,
    healthTimer: null,
    tickTimer: null,
    nextProbeAt: 0,
    // Bumped on logout and on a move: late answers of an older login are ignored.
    generation: 0,
  };

  // ---- small helpers ----

  function now() {
    return Date.now();
  }

  function clip(text, max) {
    const s = String(text);
    return s.length > max ? s.slice(0, max - 1) + "…" : s;
  }

  function secs(ms) {
    return (ms / 1000).toFixed(1) + " s";
  }

  function clock(tMs) {
    const d = new Date(tMs);
    const two = (n) => String(n).padStart(2, "0");
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }

  /** `host[:port]`, lower-cased, or null if `text` is not one. */
  function parseHost(text) {
    if (typeof text !== "string" || text.length === 0 || text.length > 260) return null;
    const m = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)(?::([0-9]{1,5}))?$/.exec(text);
    if (!m) return null;
    if (m[1].length > 253) return null;
    if (m[2] !== undefined) {
      const port = Number(m[2]);
      if (!(port >= 1 && port <= 65535)) return null;
    }
    // The browser's own parser must read the same host back.
    let url;
    try {
      url = new URL(`${location.protocol}//${text}/`);
    } catch (e) {
      return null;
    }
    const normal = text.toLowerCase();
    if (url.host !== normal && url.host !== normal.replace(/:(80|443)$/, "")) return null;
    return normal;
  }

  function b64urlEncode(text) {
    const bytes = new TextEncoder().encode(text);
    let bin = "";
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64urlDecode(text) {
    if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error("not base64url");
    let b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  }

  function storage() {
    try {
      return global.sessionStorage;
    } catch (e) {
      return null;
    }
  }

  function store(key, value) {
    const s = storage();
    if (!s) return;
    try {
      if (value === null) s.removeItem(key);
      else s.setItem(key, value);
    } catch (e) {
      console.warn(LOG, "cannot use sessionStorage:", e);
    }
  }

  function stored(key) {
    const s = storage();
    if (!s) return null;
    try {
      return s.getItem(key);
    } catch (e) {
      return null;
    }
  }

  /** fetch() bounded by `ms`; resolves with the Response, rejects on failure or timeout. */
  function fetchWithin(url, init, ms) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), ms);
    return fetch(url, Object.assign({ cache: "no-store", signal: abort.signal }, init)).then(
      (r) => {
        clearTimeout(timer);
        return r;
      },
      (e) => {
        clearTimeout(timer);
        throw new Error(abort.signal.aborted ? `no answer within ${ms} ms` : `request failed (${e && e.message ? e.message : e})`);
      },
    );
  }

  /** The server's `{"error": ...}` sentence, or the status. */
  async function errorOf(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (e) {
      // the status is enough
    }
    try {
      const doc = JSON.parse(text);
      if (doc && typeof doc.error === "string") return clip(doc.error, MAX_REASON_CHARS);
    } catch (e) {
      // not JSON
    }
    return `HTTP ${response.status}${text ? ": " + clip(text.trim(), 200) : ""}`;
  }

  async function jsonOf(response) {
    try {
      return await response.json();
    } catch (e) {
      return null;
    }
  }

  function parseData(text) {
    try {
      const v = JSON.parse(text);
      return v && typeof v === "object" ? v : null;
    } catch (e) {
      return null;
    }
  }

  // ---- state, banner ----

  function snapshot() {
    const trouble = currentTrouble();
    return {
      site: S.site,
      user: S.user,
      session: S.session,
      connected: S.connected,
      moved: S.moved,
      reason: S.reason,
      from: S.from,
      fromSite: S.fromSite,
      backup: S.backup,
      phase: S.phase,
      trouble: trouble ? trouble.text : null,
      waiting: S.waiting,
      notice: S.notice,
      previousUp: S.previousUp,
      services: JSON.parse(JSON.stringify(S.services)),
    };
  }

  function changed() {
    renderBanner();
    if (opts && typeof opts.onState === "function") {
      try {
        opts.onState(snapshot());
      } catch (e) {
        console.error(LOG, "onState failed:", e);
      }
    }
  }

  function bannerParts() {
    let el = opts.banner;
    if (typeof el === "string") el = document.getElementById(el);
    if (!el) {
      el = document.createElement("div");
      el.id = typeof opts.banner === "string" ? opts.banner : "tandem-banner";
      el.setAttribute("role", "status");
      document.body.prepend(el);
      opts.banner = el;
    }
    let text = el.querySelector("[data-tandem-text]");
    if (!text) {
      text = document.createElement("span");
      text.setAttribute("data-tandem-text", "");
      el.append(text);
    }
    let button = el.querySelector("[data-tandem-return]");
    if (!button) {
      button = document.createElement("button");
      button.type = "button";
      button.setAttribute("data-tandem-return", "");
      button.hidden = true;
      el.append(" ", button);
    }
    if (!button.dataset.tandemBound) {
      button.dataset.tandemBound = "1";
      button.addEventListener("click", () => returnToPrevious());
    }
    return { el, text, button };
  }

  function siteName() {
    return S.site || location.host;
  }

  function renderBanner() {
    if (!opts || !document.body) return;
    const { el, text, button } = bannerParts();
    const lines = [];
    let kind = "";
    if (S.notice) {
      lines.push(S.notice);
      kind = "notice";
    }
    if (S.moved && S.phase !== "login") {
      lines.push(`Moved to site ${siteName()} from ${S.fromSite || S.from}: ${S.reason}.`);
      kind = "moved";
    }
    const trouble = currentTrouble();
    if (S.phase === "moving") {
      lines.push(`Moving to ${S.backup}: ${S.movingReason}…`);
      kind = "moving";
    } else if (trouble && S.waiting === "dwell") {
      const until = S.movedAt + opts.minDwellMs;
      lines.push(`Site ${siteName()}: ${trouble.text}. Just moved here: waiting until ${clock(until)} before moving again.`);
      kind = "waiting";
    } else if (trouble && S.waiting === "no-backup") {
      lines.push(`Site ${siteName()}: ${trouble.text}. No usable backup site (${opts.param}): staying here.`);
      kind = "no-backup";
    } else if (trouble && S.waiting === "backup-down") {
      lines.push(`Site ${siteName()}: ${trouble.text}. The backup site ${S.backup} does not answer: staying here, trying again.`);
      kind = "backup-down";
    }
    text.textContent = lines.join(" ");
    el.hidden = lines.length === 0;
    el.dataset.kind = kind;
    el.dataset.site = S.site || "";
    const canReturn = S.moved && S.previousUp && S.phase === "ready" && !!S.backup;
    button.hidden = !canReturn;
    button.textContent = `Return to ${S.fromSite || S.from || "the previous site"}`;
  }

  // ---- troubles ----

  function setTrouble(name, text, immediate, since) {
    const old = S.troubles.get(name);
    if (old) {
      old.text = text;
      old.immediate = old.immediate || immediate;
    } else {
      S.troubles.set(name, { since: since === undefined ? now() : since, text, immediate });
      console.info(LOG, `trouble at site ${siteName()}: ${text}`);
    }
  }

  function clearTrouble(name) {
    if (S.troubles.delete(name)) console.info(LOG, `trouble over at site ${siteName()}: ${name}`);
  }

  /** The trouble whose time to move has come (the oldest), else null. */
  function dueTrouble(t) {
    let due = null;
    for (const tr of S.troubles.values()) {
      if (tr.immediate || t - tr.since >= opts.hysteresisMs) {
        if (!due || tr.since < due.since) due = tr;
      }
    }
    return due;
  }

  function currentTrouble() {
    let first = null;
    for (const tr of S.troubles.values()) if (!first || tr.since < first.since) first = tr;
    return first;
  }

  // ---- the channel ----

  function closeChannel() {
    if (S.es) {
      S.es.close();
      S.es = null;
    }
    if (S.reconnectTimer) {
      clearTimeout(S.reconnectTimer);
      S.reconnectTimer = null;
    }
  }

  function heard() {
    S.lastMessageAt = now();
    if (!S.connected) {
      S.connected = true;
      clearTrouble("channel");
      changed();
    }
  }

  function channelLost(detail, since) {
    closeChannel();
    const wasConnected = S.connected;
    S.connected = false;
    setTrouble("channel", `real-time channel lost (${detail})`, false, since);
    if (wasConnected) console.warn(LOG, `real-time channel lost: ${detail}`);
    if (S.phase === "ready") {
      S.reconnectTimer = setTimeout(() => {
        S.reconnectTimer = null;
        openChannel();
      }, opts.reconnectMs);
    }
    changed();
  }

  function openChannel() {
    closeChannel();
    if (S.phase !== "ready") return;
    let es;
    try {
      es = new EventSource(opts.channel);
    } catch (e) {
      channelLost(`cannot open ${opts.channel}: ${e && e.message ? e.message : e}`);
      return;
    }
    S.es = es;
    S.esCreatedAt = now();
    const mine = (fn) => (ev) => {
      if (S.es === es) fn(ev);
    };
    es.addEventListener("open", mine(heard));
    es.addEventListener("ping", mine(heard));
    es.addEventListener("message", mine(heard));
    es.addEventListener("hello", mine((ev) => {
      heard();
      const doc = parseData(ev.data);
      if (doc && typeof doc.site === "string" && doc.site !== S.site) {
        S.site = clip(doc.site, 64);
        changed();
      }
    }));
    es.addEventListener("service", mine((ev) => {
      heard();
      onService(parseData(ev.data));
    }));
    es.addEventListener("unregistered", mine((ev) => {
      heard();
      const doc = parseData(ev.data);
      const detail = doc && typeof doc.detail === "string" ? clip(doc.detail, MAX_REASON_CHARS) : "no detail";
      setTrouble("unregistered", `endpoint reported unregistered: ${detail}`, true);
      tick();
    }));
    es.addEventListener("error", mine(() => channelLost("the connection failed or was closed")));
  }

  function onService(doc) {
    if (!doc || typeof doc.service !== "string" || typeof doc.available !== "boolean") {
      console.warn(LOG, "ignored a malformed service event");
      return;
    }
    const name = clip(doc.service, 64);
    const detail = typeof doc.detail === "string" ? clip(doc.detail, MAX_REASON_CHARS) : "";
    if (!(name in S.services) && Object.keys(S.services).length >= MAX_SERVICES) return;
    S.services[name] = { available: doc.available, detail };
    if (doc.available) clearTrouble(`service:${name}`);
    else setTrouble(`service:${name}`, `service ${name} unavailable${detail ? ": " + detail : ""}`, false);
    changed();
  }

  // ---- init, registration, health of the previous site ----

  async function runInit(generation) {
    S.initTimer = null;
    let failure = null;
    try {
      const r = await fetchWithin(opts.init, { credentials: "same-origin" }, opts.requestTimeoutMs);
      if (!r.ok) failure = await errorOf(r);
    } catch (e) {
      failure = e.message;
    }
    if (generation !== S.generation) return false;
    if (failure) {
      setTrouble("init", `initialisation failed at login: ${failure}`, true);
      // Retried so the trouble can end if the page cannot move.
      S.initTimer = setTimeout(() => runInit(generation), INIT_RETRY_MS);
      tick();
      return false;
    }
    clearTrouble("init");
    changed();
    return true;
  }

  async function runRegister(generation) {
    S.registerTimer = null;
    let refused = null;
    let unreachable = null;
    try {
      const r = await fetchWithin(opts.register, { method: "POST", credentials: "same-origin" }, opts.requestTimeoutMs);
      if (!r.ok) refused = await errorOf(r);
    } catch (e) {
      // The site did not answer: the channel's trigger (with its hysteresis) covers that.
      unreachable = e.message;
    }
    if (generation !== S.generation) return;
    let next = opts.registerEveryMs;
    if (refused) {
      S.registerFailures += 1;
      console.warn(LOG, `registration refused (${S.registerFailures} in a row): ${refused}`);
      if (S.registerFailures >= 2) setTrouble("register", `registration failed twice in a row: ${refused}`, true);
      next = opts.registerRetryMs;
    } else if (unreachable) {
      next = opts.registerRetryMs;
    } else {
      S.registerFailures = 0;
      clearTrouble("register");
      clearTrouble("unregistered");
    }
    S.registerTimer = setTimeout(() => runRegister(generation), next);
    tick();
  }

  function pollPrevious() {
    S.healthTimer = null;
    if (!S.moved || !S.backup || S.phase === "moving") return;
    const url = `${location.protocol}//${S.backup}${opts.health}`;
    fetchWithin(url, { mode: "no-cors" }, opts.probeTimeoutMs).then(
      () => true,
      () => false,
    ).then((up) => {
      if (up !== S.previousUp) {
        S.previousUp = up;
        console.info(LOG, `previous site ${S.fromSite || S.backup} ${up ? "answers" : "does not answer"}`);
        changed();
      }
      if (S.phase !== "moving") S.healthTimer = setTimeout(pollPrevious, opts.healthEveryMs);
    });
  }

  // ---- moving ----

  function targetUrl(host, carry) {
    const params = new URLSearchParams(location.search);
    params.set(opts.param, location.host);
    return `${location.protocol}//${host}${location.pathname}?${params.toString()}#${FRAGMENT_KEY}=${b64urlEncode(JSON.stringify(carry))}`;
  }

  function go(host, reason) {
    const carry = {
      token: S.token,
      session: S.session,
      from: location.host,
      fromSite: S.site,
      reason: clip(reason, MAX_REASON_CHARS),
      at: now(),
    };
    S.phase = "moving";
    S.movingReason = carry.reason;
    S.generation += 1;
    closeChannel();
    for (const t of ["registerTimer", "initTimer", "healthTimer"]) {
      if (S[t]) clearTimeout(S[t]);
      S[t] = null;
    }
    changed();
    console.warn(LOG, `moving from site ${siteName()} to ${host}: ${carry.reason}`);
    location.replace(targetUrl(host, carry));
  }

  /** Moves to the backup if it answers; otherwise stays and retries later. */
  function moveFor(trouble) {
    const host = S.backup;
    S.phase = "moving";
    S.movingReason = trouble.text;
    changed();
    const generation = S.generation;
    fetchWithin(`${location.protocol}//${host}${opts.health}`, { mode: "no-cors" }, opts.probeTimeoutMs).then(
      () => {
        if (generation !== S.generation) return;
        go(host, trouble.text);
      },
      (e) => {
        if (generation !== S.generation) return;
        console.warn(LOG, `the backup site ${host} does not answer (${e.message}): staying`);
        S.phase = "ready";
        S.waiting = "backup-down";
        S.nextProbeAt = now() + PROBE_RETRY_MS;
        if (!S.es && !S.reconnectTimer) openChannel();
        changed();
      },
    );
  }

  function tick() {
    if (!opts || S.phase !== "ready") return;
    const t = now();
    // The channel: silence counts as a loss.
    if (S.es) {
      const last = Math.max(S.lastMessageAt, S.esCreatedAt);
      if (t - last > opts.silenceMs) {
        channelLost(`no message for ${secs(t - last)}`, S.connected ? S.lastMessageAt + opts.silenceMs : undefined);
      }
    }
    const due = dueTrouble(t);
    let waiting = null;
    if (due) {
      if (!S.backup) waiting = "no-backup";
      else if (S.moved && t - S.movedAt < opts.minDwellMs) waiting = "dwell";
      else if (t < S.nextProbeAt) waiting = "backup-down";
    }
    if (due && !waiting) {
      S.waiting = null;
      moveFor(due);
      return;
    }
    const trouble = currentTrouble();
    const troubleText = trouble ? trouble.text : null;
    if (waiting !== S.waiting || troubleText !== S.lastTroubleText) {
      if (waiting !== S.waiting && waiting) console.warn(LOG, `not moving (${waiting}): ${due.text}`);
      S.waiting = waiting;
      S.lastTroubleText = troubleText;
      changed();
    }
  }

  function returnToPrevious() {
    if (!S.moved || !S.backup || S.phase !== "ready") return false;
    go(S.backup, "returned by the user");
    return true;
  }

  // ---- login ----

  async function postLogin(body) {
    const r = await fetchWithin(opts.login, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    }, opts.requestTimeoutMs);
    if (!r.ok) {
      const err = new Error(await errorOf(r));
      err.status = r.status;
      throw err;
    }
    const doc = await jsonOf(r);
    if (!doc || typeof doc.user !== "string" || typeof doc.session !== "string" || typeof doc.token !== "string") {
      throw new Error("the site answered the login with something unexpected");
    }
    return doc;
  }

  /** After any login: keep the token, init, register, open the channel. */
  async function loggedIn(doc) {
    S.generation += 1;
    const generation = S.generation;
    S.user = doc.user;
    S.session = doc.session;
    S.token = doc.token;
    S.site = typeof doc.site === "string" ? clip(doc.site, 64) : S.site;
    S.phase = "ready";
    S.registerFailures = 0;
    S.troubles.clear();
    store(TOKEN_KEY, doc.token);
    console.info(LOG, `logged in as ${S.user} at site ${S.site} (session ${S.session})`);
    changed();
    await runInit(generation);
    if (generation !== S.generation) return snapshot();
    // A failed init may be moving the page already; otherwise the channel
    // and the registration go on (and may end the trouble).
    if (S.phase === "ready") openChannel();
    runRegister(generation);
    if (S.moved && !S.healthTimer) pollPrevious();
    if (!S.tickTimer) S.tickTimer = setInterval(tick, TICK_MS);
    tick();
    return snapshot();
  }

  async function login(user, password) {
    if (!opts) throw new Error("TandemSite.start() was not called");
    if (typeof user !== "string" || typeof password !== "string" || !user || !password) {
      throw new Error("give a user and a password");
    }
    const doc = await postLogin({ user, password });
    // A password login starts afresh here: no move to tell about.
    S.moved = false;
    S.reason = S.from = S.fromSite = S.movedAt = null;
    S.notice = S.backupNotice || null;
    store(MOVED_KEY, null);
    return loggedIn(doc);
  }

  function logout() {
    S.generation += 1;
    closeChannel();
    for (const t of ["registerTimer", "initTimer", "healthTimer"]) {
      if (S[t]) clearTimeout(S[t]);
      S[t] = null;
    }
    store(TOKEN_KEY, null);
    store(MOVED_KEY, null);
    Object.assign(S, { phase: "login", user: null, session: null, token: null, connected: false, moved: false, reason: null, from: null, fromSite: null, movedAt: null, waiting: null, services: {} });
    S.troubles.clear();
    changed();
  }

  // ---- start ----

  /** The carried state of a move, from the `#tandem=` fragment (removed), or null. */
  function takeFragment() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash) return null;
    const parts = hash.split("&");
    const mine = parts.find((p) => p.startsWith(FRAGMENT_KEY + "="));
    if (!mine) return null;
    const rest = parts.filter((p) => p !== mine).join("&");
    try {
      history.replaceState(history.state, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    } catch (e) {
      console.warn(LOG, "cannot remove the fragment from the address bar:", e);
    }
    const encoded = mine.slice(FRAGMENT_KEY.length + 1);
    let carry;
    try {
      if (encoded.length > MAX_FRAGMENT_CHARS) throw new Error(`longer than ${MAX_FRAGMENT_CHARS} characters`);
      carry = JSON.parse(b64urlDecode(encoded));
      const problem = checkCarry(carry);
      if (problem) throw new Error(problem);
    } catch (e) {
      console.warn(LOG, `ignored a malformed #${FRAGMENT_KEY}= fragment: ${e.message}`);
      return null;
    }
    return carry;
  }

  function checkCarry(c) {
    if (!c || typeof c !== "object" || Array.isArray(c)) return "not a JSON object";
    if (typeof c.token !== "string" || !/^[A-Za-z0-9_.-]{1,2048}$/.test(c.token) || c.token.length > MAX_TOKEN_CHARS) return "no valid token";
    if (typeof c.session !== "string" || !/^[A-Za-z0-9_-]{1,128}$/.test(c.session)) return "no valid session";
    if (parseHost(c.from) === null) return "no valid from (host[:port])";
    if (typeof c.reason !== "string" || c.reason.length > MAX_REASON_CHARS) return "no valid reason";
    if (c.fromSite !== undefined && c.fromSite !== null && (typeof c.fromSite !== "string" || c.fromSite.length > 64)) return "no valid fromSite";
    if (typeof c.at !== "number" || !isFinite(c.at)) return "no valid time (at)";
    if (Math.abs(now() - c.at) > MAX_FRAGMENT_AGE_MS) return `too old (${secs(now() - c.at)})`;
    return null;
  }

  function readBackup() {
    const raw = new URLSearchParams(location.search).get(opts.param);
    if (raw === null || raw === "") return;
    const host = parseHost(raw);
    if (host === null) {
      S.backupNotice = `The backup site "${clip(raw, 80)}" (${opts.param}) is refused: it is not host[:port]. This page will not move to another site.`;
      console.warn(LOG, S.backupNotice);
    } else if (host === location.host.toLowerCase()) {
      S.backupNotice = `The backup site ${host} (${opts.param}) is this site: this page will not move to another site.`;
      console.warn(LOG, S.backupNotice);
    } else {
      S.backup = host;
    }
    S.notice = S.backupNotice || null;
  }

  async function start(options) {
    if (opts) throw new Error("TandemSite.start() was already called");
    opts = Object.assign({}, DEFAULTS, options || {});
    for (const k of Object.keys(DEFAULTS)) {
      if (k.endsWith("Ms") && !(typeof opts[k] === "number" && opts[k] >= 0 && isFinite(opts[k]))) {
        console.warn(LOG, `option ${k} is not a duration in ms: using ${DEFAULTS[k]}`);
        opts[k] = DEFAULTS[k];
      }
    }
    readBackup();
    const carry = takeFragment();
    if (carry) {
      try {
        const doc = await postLogin({ token: carry.token });
        if (doc.session !== carry.session) console.warn(LOG, "the site gave another session than the carried one");
        S.moved = true;
        S.from = parseHost(carry.from);
        S.fromSite = carry.fromSite ? clip(carry.fromSite, 64) : null;
        S.reason = carry.reason;
        S.movedAt = now();
        store(MOVED_KEY, JSON.stringify({ from: S.from, fromSite: S.fromSite, reason: S.reason, at: S.movedAt }));
        return await loggedIn(doc);
      } catch (e) {
        console.warn(LOG, `the carried token was refused: ${e.message}`);
        S.notice = [S.backupNotice, `Moved here from ${carry.fromSite || carry.from} (${carry.reason}), but this site refused the sign-on (${e.message}): please log in.`].filter(Boolean).join(" ");
      }
    }
    const token = stored(TOKEN_KEY);
    if (token && !carry) {
      try {
        const doc = await postLogin({ token });
        const moved = parseData(stored(MOVED_KEY) || "null");
        if (moved && parseHost(moved.from) !== null && typeof moved.at === "number") {
          S.moved = true;
          S.from = parseHost(moved.from);
          S.fromSite = typeof moved.fromSite === "string" ? clip(moved.fromSite, 64) : null;
          S.reason = typeof moved.reason === "string" ? clip(moved.reason, MAX_REASON_CHARS) : "unknown";
          S.movedAt = moved.at;
        }
        return await loggedIn(doc);
      } catch (e) {
        console.warn(LOG, `the stored token was refused: ${e.message}`);
        store(TOKEN_KEY, null);
        store(MOVED_KEY, null);
      }
    }
    S.phase = "login";
    changed();
    return snapshot();
  }

  global.TandemSite = Object.freeze({
    start,
    login,
    logout,
    returnToPrevious,
    state: snapshot,
  });
})(window);
