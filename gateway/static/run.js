// A run's page (/runs/{id}): its spec and facts, a live progress bar, log lines and state
// changes as they come over the gateway's SSE stream, the result, and a Cancel button.
//
// The stream is read with fetch() so its answer's status and Retry-After are seen: a refusal
// (503 while the runner is away, 429) waits as told, with jittered backoff; a stream that
// drops, ends with `event: error`, or stays silent past three keep-alive periods is opened
// again with Last-Event-ID = the last seq seen, so no event is lost or shown twice.
"use strict";
import {
  ApiError, TERMINAL, api, backoffMs, banner, bar, byId, explain, h, number, percent, retryable,
  runDuration, scenarioOf, setBar, setStateBadge, sleep, stateBadge, when,
} from "./common.js";
import { renderResult } from "./results.js";

const MAX_LOG_LINES = 2000;
const FLUSH_MS = 100;
const SILENCE_MS = 50000; // keep-alives come every 15 s by default

const runId = decodeURIComponent(location.pathname.replace(/^\/runs\//, ""));
const page = {
  run: null,
  lastSeq: 0,
  ended: false,
  badge: stateBadge("QUEUED"),
  bar: bar(true),
  pendingLines: [],
  lines: 0,
  dropped: 0,
  flushScheduled: false,
};

// ------------------------------------------------------------------ facts and result

function fact(label, value, mono = false) {
  return [h("dt", { text: label }), h("dd", { class: mono ? "mono" : "", text: value == null || value === "" ? "—" : String(value) })];
}

function renderFacts() {
  const run = page.run;
  const labels = Object.entries(run.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  byId("facts").replaceChildren(
    ...fact("Kind", run.kind),
    ...fact("Scenario", scenarioOf(run.spec)),
    ...fact("Created", when(run.createTime)),
    ...fact("Started", when(run.startTime)),
    ...fact("Ended", when(run.endTime)),
    ...fact("Duration", runDuration(run)),
    ...fact("Attempt", `${run.attempt || 1} of ${run.maxAttempts || 1}`),
    ...fact("Replica", run.replica),
    ...fact("Timeout", run.timeout),
    ...fact("Request id", run.requestId, true),
    ...fact("Labels", labels),
  );
  byId("spec").textContent = JSON.stringify(run.spec || {}, null, 2);
}

function setState(state) {
  page.run.state = state;
  setStateBadge(page.badge, state);
  byId("cancel").disabled = TERMINAL.has(state) || page.run.cancelRequested;
  byId("cancel").hidden = TERMINAL.has(state);
  if (state === "SUCCEEDED") setProgress({ ...(page.run.progress || {}), fraction: 1 });
}

function setProgress(progress) {
  page.run.progress = progress;
  const fraction = Number(progress.fraction || 0);
  setBar(page.bar, fraction);
  const count = Number(progress.total) ? `${number(progress.done)} / ${number(progress.total)} · ` : "";
  byId("progress-text").textContent = `${count}${percent(fraction)}${progress.message ? ` · ${progress.message}` : ""}`;
}

function showEnd(run) {
  const panel = byId("result-panel");
  const target = byId("result");
  if (run.state === "SUCCEEDED" && run.result) {
    target.replaceChildren(renderResult(run.kind, run.result));
  } else if (run.error && (run.error.message || run.error.code)) {
    target.replaceChildren(h("div", { class: "error-box", role: "alert" }, h("strong", { text: `${run.state}: ` }), run.error.message || `code ${run.error.code}`));
  } else if (TERMINAL.has(run.state)) {
    target.replaceChildren(h("p", { class: "muted", text: `The run ended ${run.state}.` }));
  } else {
    return;
  }
  panel.hidden = false;
}

// ------------------------------------------------------------------ the log

function logLine(time, className, text, level = "") {
  page.pendingLines.push([time, className, text, level]);
  if (!page.flushScheduled) {
    page.flushScheduled = true;
    // At most ten DOM updates a second, in a frame when the tab is shown (a hidden tab has
    // no frames: the timer alone keeps its log current).
    setTimeout(() => (document.hidden ? flushLog() : requestAnimationFrame(flushLog)), FLUSH_MS);
  }
}

/** Lines may come faster than frames: add those waiting at once, keep the last MAX_LOG_LINES. */
function flushLog() {
  page.flushScheduled = false;
  const list = byId("log");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const fragment = document.createDocumentFragment();
  for (const [time, className, text, level] of page.pendingLines.splice(0)) {
    const li = h("li", { class: className }, h("span", { class: "t", text: time ? new Date(time).toISOString().slice(11, 23) : "" }));
    if (level) li.append(h("span", { class: `lvl-${level.toLowerCase()}`, text: `${level} ` }));
    li.append(text);
    fragment.append(li);
    page.lines += 1;
  }
  list.append(fragment);
  const extra = list.children.length - MAX_LOG_LINES;
  for (let i = 0; i < extra; i += 1) list.firstElementChild.remove();
  if (extra > 0) page.dropped += extra;
  if (atBottom) list.scrollTop = list.scrollHeight;
  byId("log-count").textContent = `(${number(page.lines)} lines${page.dropped ? `, the first ${number(page.dropped)} not kept here` : ""})`;
}

// ------------------------------------------------------------------ events

function handle(event) {
  const seq = Number(event.seq);
  if (seq <= page.lastSeq) return; // already shown (a resumed stream starts after lastSeq anyway)
  page.lastSeq = seq;
  if (event.stateChange) {
    const change = event.stateChange;
    setState(change.state);
    logLine(event.time, "state", `state ${change.state}${change.reason ? ` (${change.reason})` : ""}`);
    if (change.error) page.run.error = change.error;
    if (TERMINAL.has(change.state)) {
      page.ended = true;
      page.run.endTime = page.run.endTime || event.time;
      finish();
    }
  } else if (event.progress) {
    setProgress(event.progress);
  } else if (event.log) {
    logLine(event.time, "", event.log.message || "", event.log.level || "");
  } else if (event.result) {
    page.run.result = event.result;
  }
}

/** Once the run has ended: read it whole (result, error, times) and show it. */
async function finish() {
  setStreamState("ended");
  for (let failures = 1; failures <= 8; failures += 1) {
    try {
      page.run = await api(`/v1/runs/${encodeURIComponent(runId)}`);
      break;
    } catch (err) {
      if (!retryable(err)) break;
      await sleep(backoffMs(failures, err.retryAfterS));
    }
  }
  renderFacts();
  setState(page.run.state);
  showEnd(page.run);
}

function setStreamState(text) {
  byId("stream-state").textContent = text ? `· ${text}` : "";
}

/** Parse an SSE body: calls onEvent(type, data, id) per event; comments just prove liveness. */
async function readSse(response, onEvent, onAlive) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onAlive();
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      let type = "message";
      let id = null;
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
        else if (field === "id") id = text;
      }
      if (data.length) onEvent(type, data.join("\n"), id);
    }
  }
}

async function follow() {
  let failures = 0;
  while (!page.ended) {
    const controller = new AbortController();
    let silence = null;
    const alive = () => {
      clearTimeout(silence);
      silence = setTimeout(() => controller.abort(), SILENCE_MS);
    };
    try {
      const headers = { Accept: "text/event-stream" };
      if (page.lastSeq) headers["Last-Event-ID"] = String(page.lastSeq);
      alive();
      setStreamState(failures ? "reconnecting…" : "connecting…");
      let response;
      try {
        response = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events`, { headers, signal: controller.signal, cache: "no-store" });
      } catch {
        throw new ApiError(0, { message: "the stream could not be opened" });
      }
      if (!response.ok) throw await ApiError.of(response);
      setStreamState("live");
      banner.clear("stream");
      let streamError = null;
      await readSse(
        response,
        (type, data) => {
          const body = JSON.parse(data);
          if (type === "error") {
            streamError = new ApiError(body.code === 14 ? 503 : 500, body);
            return;
          }
          failures = 0;
          handle(body);
        },
        alive,
      ).catch(() => {
        if (!page.ended) streamError = streamError || new ApiError(0, { message: "the stream was cut" });
      });
      if (page.ended) break;
      if (!streamError && (await endedMeanwhile())) break;
      throw streamError || new ApiError(0, { message: "the stream ended before the run did" });
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        banner.set("stream", { title: "No such run", text: err.message, level: "bad" });
        return;
      }
      failures += 1;
      const wait = backoffMs(failures, err.retryAfterS);
      banner.set("stream", { ...explain(err), retryAt: Date.now() + wait });
      setStreamState(`interrupted, resuming after event ${page.lastSeq}`);
      await sleep(wait);
    } finally {
      clearTimeout(silence);
      controller.abort();
    }
  }
  banner.clear("stream");
}

/**
 * A stream that ends cleanly before its terminal event: the run may have ended without an event
 * after the one we resumed from (events seen live but lost with a runner killed before it
 * stored them). The stored run is the truth: show its end.
 */
async function endedMeanwhile() {
  let run;
  try {
    run = await api(`/v1/runs/${encodeURIComponent(runId)}`);
  } catch {
    return false;
  }
  if (!TERMINAL.has(run.state)) return false;
  logLine(run.endTime, "state", `state ${run.state} (as stored; the stream had no event after ${page.lastSeq})`);
  page.ended = true;
  page.run = run;
  renderFacts();
  setState(run.state);
  showEnd(run);
  setStreamState("ended");
  return true;
}

// ------------------------------------------------------------------ cancel

async function cancel() {
  const button = byId("cancel");
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    const run = await api(`/v1/runs/${encodeURIComponent(runId)}:cancel`, { method: "POST", body: { reason: "cancelled from the web page" } });
    page.run.cancelRequested = true;
    button.textContent = TERMINAL.has(run.state) ? "Cancel" : "Cancel requested";
  } catch (err) {
    const { title, text } = explain(err);
    banner.set("cancel", { title: `Cancel failed: ${title}`, text, level: "bad" });
    setTimeout(() => banner.clear("cancel"), 10000);
    button.textContent = "Cancel";
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ start

async function main() {
  byId("run-id").textContent = runId;
  byId("state").append(page.badge);
  byId("bar").append(page.bar);
  byId("cancel").addEventListener("click", cancel);
  document.title = `Run ${runId.slice(0, 12)} · runner`;
  for (let failures = 1; ; failures += 1) {
    try {
      page.run = await api(`/v1/runs/${encodeURIComponent(runId)}`);
      banner.clear("run");
      break;
    } catch (err) {
      if (!retryable(err)) {
        banner.set("run", { ...explain(err), level: "bad" });
        return;
      }
      const wait = backoffMs(failures, err.retryAfterS);
      banner.set("run", { ...explain(err), retryAt: Date.now() + wait });
      await sleep(wait);
    }
  }
  const run = page.run;
  renderFacts();
  setState(run.state);
  setProgress(run.progress || {});
  setInterval(() => {
    if (page.run && page.run.state === "RUNNING") renderFactsDuration();
  }, 1000);
  // Even for a finished run: the stream replays its stored events (the log) and ends.
  await follow();
}

function renderFactsDuration() {
  const facts = byId("facts");
  const dd = facts.querySelectorAll("dd")[5];
  if (dd) dd.textContent = runDuration(page.run);
}

main();
