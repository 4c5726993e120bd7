// Shared by the operator pages: DOM building (text only, never markup), the REST client with
// the gateway's error contract, backoff that honours Retry-After, pollers, the status banner.
"use strict";

export const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "DEADLINE_EXCEEDED", "INTERRUPTED"]);
export const STATES = ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "DEADLINE_EXCEEDED", "INTERRUPTED"];
export const KINDS = ["simulation", "batch", "compare", "sweep", "diagnostic"];

/** An element with properties and children; strings become text nodes (never parsed as HTML). */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "on") for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function byId(id) {
  return document.getElementById(id);
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ------------------------------------------------------------------ the REST client

/** An error answer of the gateway (a google.rpc.Status as JSON), or no answer at all (status 0). */
export class ApiError extends Error {
  constructor(status, body, retryAfterS) {
    const message = (body && body.message) || (status ? `HTTP ${status}` : "the gateway did not answer");
    super(message);
    this.status = status;
    this.code = body && body.code;
    this.body = body || {};
    this.reason = "";
    this.violations = [];
    this.retryAfterS = retryAfterS;
    for (const detail of (body && body.details) || []) {
      const type = String(detail["@type"] || "");
      if (type.endsWith("google.rpc.ErrorInfo")) this.reason = detail.reason || "";
      else if (type.endsWith("google.rpc.BadRequest")) this.violations = detail.fieldViolations || [];
      else if (type.endsWith("google.rpc.RetryInfo") && this.retryAfterS == null) {
        const seconds = parseFloat(String(detail.retryDelay || "").replace(/s$/, ""));
        if (Number.isFinite(seconds)) this.retryAfterS = seconds;
      }
    }
  }

  static async of(response) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    return new ApiError(response.status, body, retryAfterOf(response));
  }
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP date), or null. */
export function retryAfterOf(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(0, (date - Date.now()) / 1000) : null;
}

/** A JSON call to the gateway; resolves to the parsed body, rejects with an ApiError. */
export async function api(path, { method = "GET", body, token, timeoutMs = 15000, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  if (signal) signal.addEventListener("abort", () => controller.abort(), { once: true });
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, { message: controller.signal.aborted ? "no answer in time" : "the gateway did not answer" });
  } finally {
    clearTimeout(timer);
  }
  if (!response.ok) throw await ApiError.of(response);
  return response.json();
}

/** What a failed call means for an operator: a short title and a sentence. */
export function explain(err) {
  if (!(err instanceof ApiError)) return { title: "Error", text: String(err && err.message ? err.message : err) };
  const reasons = {
    QUEUE_FULL: "Queue full",
    CIRCUIT_OPEN: "Database circuit open",
    DRAINING: "Runner draining",
    DB_UNAVAILABLE: "Database unavailable",
    DB_POOL_EXHAUSTED: "Database busy",
  };
  if (err.reason && reasons[err.reason]) return { title: reasons[err.reason], text: err.message };
  if (err.status === 0) return { title: "Gateway unreachable", text: err.message };
  if (err.status === 503 || err.status === 502) return { title: "Runner unreachable", text: err.message };
  if (err.status === 429) return { title: "Too many requests", text: err.message };
  if (err.status === 504) return { title: "Too slow", text: err.message };
  if (err.status === 401 || err.status === 403) return { title: "Not authorized", text: err.message };
  return { title: `HTTP ${err.status}`, text: err.message };
}

/** Is it worth trying again later? (network, 408, 429, 5xx) */
export function retryable(err) {
  return err instanceof ApiError && (err.status === 0 || err.status === 408 || err.status === 429 || err.status >= 500);
}

/**
 * How long to wait before attempt `failures` + 1: exponential from baseMs, capped, with jitter
 * (half fixed, half random, so clients spread out but never hurry); never less than what the
 * server asked for in Retry-After (plus up to 20 % so a crowd does not come back at once).
 */
export function backoffMs(failures, retryAfterS, { baseMs = 1000, capMs = 15000 } = {}) {
  const exp = Math.min(capMs, baseMs * 2 ** Math.max(0, failures - 1));
  let wait = exp / 2 + Math.random() * (exp / 2);
  if (retryAfterS != null) wait = Math.max(wait, retryAfterS * 1000 * (1 + Math.random() * 0.2));
  return Math.max(baseMs / 2, wait);
}

// ------------------------------------------------------------------ the status banner

/**
 * One banner per page, fed by several sources (a poller, a stream, a form): each source sets
 * or clears its own problem; the banner shows the latest one, with a countdown to the retry.
 */
class StatusBanner {
  constructor() {
    this.problems = new Map();
    this.timer = null;
  }

  set(source, { title, text, retryAt = null, level = "warn" }) {
    this.problems.set(source, { title, text, retryAt, level, since: Date.now() });
    this.render();
  }

  clear(source) {
    if (this.problems.delete(source)) this.render();
  }

  render() {
    const node = byId("status");
    if (!node) return;
    const latest = [...this.problems.values()].sort((a, b) => b.since - a.since)[0];
    if (!latest) {
      node.className = "status";
      node.replaceChildren();
      clearInterval(this.timer);
      this.timer = null;
      return;
    }
    const parts = [h("strong", { text: latest.title }), latest.text];
    if (latest.retryAt) {
      const seconds = Math.max(0, Math.ceil((latest.retryAt - Date.now()) / 1000));
      parts.push(h("span", { class: "muted", text: ` — trying again in ${seconds} s` }));
    }
    node.className = `status shown${latest.level === "bad" ? " bad" : ""}`;
    node.replaceChildren(...parts);
    if (!this.timer) this.timer = setInterval(() => this.render(), 1000);
  }
}

export const banner = new StatusBanner();

// ------------------------------------------------------------------ polling

/**
 * Calls `fn` every `intervalMs` (slower while the page is hidden; sooner when `fn` returns a
 * number of ms), one call at a time. A failure
 * that may pass is retried after backoffMs (Retry-After honoured), shown on the banner, and
 * cleared on the next success; any other failure is shown and polling goes on at the interval.
 */
export class Poller {
  constructor(name, fn, { intervalMs = 2000, hiddenIntervalMs = 15000, capMs = 15000 } = {}) {
    this.name = name;
    this.fn = fn;
    this.intervalMs = intervalMs;
    this.hiddenIntervalMs = hiddenIntervalMs;
    this.capMs = capMs;
    this.failures = 0;
    this.timer = null;
    this.running = false;
    this.stopped = true;
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !this.stopped && this.failures === 0) this.now();
    });
  }

  start() {
    this.stopped = false;
    this.now();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Poll at once (or right after the call in flight). */
  now() {
    clearTimeout(this.timer);
    if (this.running) {
      this.again = true;
      return;
    }
    this.tick();
  }

  async tick() {
    if (this.stopped) return;
    this.running = true;
    let delay;
    try {
      const hint = await this.fn(); // a number: the call asks to be made again sooner
      this.failures = 0;
      banner.clear(this.name);
      delay = document.hidden ? this.hiddenIntervalMs : typeof hint === "number" ? hint : this.intervalMs;
    } catch (err) {
      this.failures += 1;
      const retry = retryable(err);
      delay = retry ? backoffMs(this.failures, err.retryAfterS, { capMs: this.capMs }) : this.intervalMs * 5;
      banner.set(this.name, { ...explain(err), retryAt: Date.now() + delay, level: retry ? "warn" : "bad" });
    } finally {
      this.running = false;
    }
    if (this.stopped) return;
    if (this.again && this.failures === 0) {
      this.again = false;
      delay = 0;
    }
    this.again = false;
    this.timer = setTimeout(() => this.tick(), delay);
  }
}

// ------------------------------------------------------------------ formatting

export function shortId(id) {
  return String(id || "").slice(0, 12);
}

export function stateBadge(state) {
  const name = state || "RUN_STATE_UNSPECIFIED";
  return h("span", { class: `badge state-${name.toLowerCase()}`, text: name.replace("_", " ") });
}

export function setStateBadge(node, state) {
  node.className = `badge state-${String(state).toLowerCase()}`;
  node.textContent = String(state).replace("_", " ");
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const now = new Date();
  const sameDay = date.toDateString() === now.toDateString();
  return sameDay
    ? date.toLocaleTimeString(undefined, { hour12: false })
    : `${date.toLocaleDateString()} ${date.toLocaleTimeString(undefined, { hour12: false })}`;
}

export function duration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} m`;
}

/** How long a run has run (or ran): start → end, or start → now while running. */
export function runDuration(run, now = Date.now()) {
  if (!run.startTime) return "";
  const end = run.endTime ? Date.parse(run.endTime) : TERMINAL.has(run.state) ? NaN : now;
  return duration(end - Date.parse(run.startTime));
}

export function number(value, digits = 3) {
  const n = Number(value);
  if (!Number.isFinite(n)) return String(value ?? "");
  return Number.isInteger(n) ? n.toLocaleString("en-US") : n.toFixed(digits).replace(/0+$/, "").replace(/\.$/, "");
}

export function percent(fraction) {
  const n = Number(fraction);
  return Number.isFinite(n) ? `${Math.floor(n * 100)} %` : "";
}

/** The scenario(s) a spec names, or "" (diagnostic, plugin). */
export function scenarioOf(spec) {
  if (!spec) return "";
  if (spec.simulation) return spec.simulation.scenario || "";
  if (spec.batch) return (spec.batch.simulation || {}).scenario || "";
  if (spec.sweep) return (spec.sweep.simulation || {}).scenario || "";
  if (spec.compare) {
    const a = (spec.compare.baseline || {}).scenario || "";
    const b = (spec.compare.variant || {}).scenario || "";
    return a === b ? a : `${a} vs ${b}`;
  }
  return "";
}

export function kindOf(run) {
  if (run.kind) return run.kind;
  return Object.keys(run.spec || {})[0] || "";
}

/** A progress bar (div.bar > div.fill); `setBar` moves it. */
export function bar(big = false) {
  const fill = h("div", { class: "fill" });
  const node = h("div", { class: big ? "bar big" : "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
  return node;
}

export function setBar(node, fraction) {
  const pct = Math.max(0, Math.min(100, Number(fraction || 0) * 100));
  node.firstChild.style.width = `${pct}%`;
  node.setAttribute("aria-valuenow", String(Math.floor(pct)));
}
