// The runs page (/): GetSummary's counts, the runs table (ListRuns, keyset pages), live.
//
// Live without flooding: one poller asks GetSummary (served from the runner's cache) every
// 2 s; the table is asked again only when the summary's revisions say runs were added or
// changed state (or every 15 s), and the progress of running runs comes from the summary.
// While the runner is away, only the summary poller tries, with backoff (Retry-After honoured).
"use strict";
import {
  STATES, KINDS, Poller, api, banner, bar, byId, explain, h, kindOf, number, percent, runDuration,
  scenarioOf, setBar, setStateBadge, shortId, stateBadge, when,
} from "./common.js";

const MAX_PAGE = 500;
const MAX_ROWS = 5000;
const LIST_EVERY_MS = 15000;
const STALE_AGAIN_MS = 1000;

const view = {
  state: "",
  kind: "",
  pageSize: 50,
  runs: [], // in table order
  next: "", // page_token of the page after the loaded ones
  revision: null, // counts and recent_runs revisions of the last summary that loaded the table
  listedAt: 0,
  generation: 0, // bumped when the filters change: answers to older questions are dropped
  rows: new Map(), // run_id -> {tr, cells, sig, run}
};

function readQuery() {
  const q = new URLSearchParams(location.search);
  view.state = STATES.includes(q.get("state")) ? q.get("state") : "";
  view.kind = q.get("kind") || "";
  const size = Number(q.get("page_size"));
  if ([20, 50, 100, 500].includes(size)) view.pageSize = size;
}

function writeQuery() {
  const q = new URLSearchParams();
  if (view.state) q.set("state", view.state);
  if (view.kind) q.set("kind", view.kind);
  if (view.pageSize !== 50) q.set("page_size", String(view.pageSize));
  const search = q.toString();
  history.replaceState(null, "", search ? `/?${search}` : "/");
}

function listPath(size, token) {
  const q = new URLSearchParams({ page_size: String(size) });
  if (token) q.set("page_token", token);
  if (view.state) q.set("state", view.state);
  if (view.kind) q.set("kind", view.kind);
  return `/v1/runs?${q}`;
}

/** Ask again for as many runs as are shown (at least a page), newest first, page by page. */
async function loadList() {
  const generation = view.generation;
  const want = Math.min(MAX_ROWS, Math.max(view.pageSize, view.runs.length));
  const runs = [];
  let token = "";
  do {
    const page = await api(listPath(Math.min(MAX_PAGE, want - runs.length), token));
    runs.push(...(page.runs || []));
    token = page.nextPageToken || "";
  } while (token && runs.length < want);
  if (generation !== view.generation) return false;
  view.runs = runs;
  view.next = token;
  view.listedAt = Date.now();
  render();
  return true;
}

async function loadMore() {
  const button = byId("more");
  button.disabled = true;
  const generation = view.generation;
  try {
    const page = await api(listPath(view.pageSize, view.next));
    if (generation !== view.generation) return;
    const known = new Set(view.runs.map((r) => r.runId));
    view.runs.push(...(page.runs || []).filter((r) => !known.has(r.runId)));
    view.next = page.nextPageToken || "";
    render();
  } catch (err) {
    banner.set("more", { ...explain(err), level: "bad" });
    setTimeout(() => banner.clear("more"), 8000);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ summary

function revisionOf(summary) {
  return (summary.sections || [])
    .filter((s) => s.name === "counts" || s.name === "recent_runs")
    .map((s) => `${s.name}:${s.revision}`)
    .join(",");
}

async function pollSummary() {
  const summary = await api("/v1/summary?recent_limit=1");
  renderCounts(summary.counts || []);
  for (const item of summary.recentProgress || []) {
    const row = view.rows.get(item.runId);
    if (row && row.run.state === "RUNNING") {
      row.run.progress = item.progress;
      updateRow(row);
    }
  }
  const revision = revisionOf(summary);
  if (revision !== view.revision || Date.now() - view.listedAt > LIST_EVERY_MS) {
    if (await loadList()) view.revision = revision;
  }
  byId("updated").textContent = `updated ${when(new Date().toISOString())}`;
  // A stale section is being rebuilt on the runner: its fresh answer is a moment away.
  const stale = (summary.sections || []).some((s) => s.name !== "recent_progress" && s.cache === "CACHE_STALE");
  return stale ? STALE_AGAIN_MS : undefined;
}

function renderCounts(counts) {
  const byState = new Map(counts.map((c) => [c.state, Number(c.count)]));
  const total = [...byState.values()].reduce((a, b) => a + b, 0);
  const node = byId("counts");
  const items = [["", "all", total], ...STATES.map((s) => [s, s.replace("_", " "), byState.get(s) || 0])];
  if (node.children.length !== items.length) {
    node.replaceChildren(
      ...items.map(([state, label]) =>
        h(
          "button",
          { type: "button", class: `count${state ? ` state-${state.toLowerCase()}` : ""}`, dataset: { state }, on: { click: () => setFilter("state", state) } },
          h("span", { class: "n", text: "0" }),
          h("span", { class: "label", text: label }),
        ),
      ),
    );
  }
  items.forEach(([state, , n], i) => {
    const button = node.children[i];
    button.firstChild.textContent = number(n);
    button.setAttribute("aria-pressed", String(view.state === state));
  });
}

// ------------------------------------------------------------------ the table

function signature(run) {
  const p = run.progress || {};
  return [run.state, p.done, p.total, p.message, run.startTime, run.endTime].join("|");
}

function makeRow(run) {
  const link = h("a", { href: `/runs/${encodeURIComponent(run.runId)}`, class: "mono", title: run.runId, text: shortId(run.runId) });
  const cells = {
    state: h("td"),
    kind: h("td", { text: kindOf(run) }),
    scenario: h("td", { class: "col-scenario", text: scenarioOf(run.spec) }),
    created: h("td", { class: "col-created", title: run.createTime || "", text: when(run.createTime) }),
    duration: h("td", { class: "num col-duration" }),
    bar: bar(),
    pct: h("span", { class: "pct" }),
  };
  cells.progress = h("td", { class: "progress" }, h("div", { class: "progress-cell" }, cells.bar, cells.pct));
  const tr = h("tr", { dataset: { runId: run.runId } }, h("td", {}, link), cells.state, cells.kind, cells.scenario, cells.created, cells.duration, cells.progress);
  const row = { tr, cells, sig: null, run, badge: stateBadge(run.state) };
  cells.state.append(row.badge);
  updateRow(row);
  return row;
}

function updateRow(row) {
  const run = row.run;
  const sig = signature(run);
  row.cells.duration.textContent = runDuration(run);
  if (sig === row.sig) return;
  row.sig = sig;
  row.tr.dataset.state = run.state;
  setStateBadge(row.badge, run.state);
  const p = run.progress || {};
  const fraction = run.state === "SUCCEEDED" ? 1 : Number(p.fraction || 0);
  setBar(row.cells.bar, fraction);
  row.cells.pct.textContent = percent(fraction);
  row.cells.progress.title = p.message || "";
}

function render() {
  const body = byId("rows");
  const seen = new Set();
  const order = [];
  for (const run of view.runs) {
    let row = view.rows.get(run.runId);
    if (row) {
      row.run = run;
      updateRow(row);
    } else {
      row = makeRow(run);
      view.rows.set(run.runId, row);
    }
    seen.add(run.runId);
    order.push(row.tr);
  }
  for (const id of [...view.rows.keys()]) if (!seen.has(id)) view.rows.delete(id);
  const same = order.length === body.children.length && order.every((tr, i) => body.children[i] === tr);
  if (!same) body.replaceChildren(...order);
  byId("empty").hidden = view.runs.length > 0;
  byId("more").hidden = !view.next || view.runs.length >= MAX_ROWS;
  byId("shown").textContent = view.runs.length ? `${number(view.runs.length)} shown${view.next ? ", more older ones" : ""}` : "";
  if (!render.marked && view.runs.length) {
    render.marked = true;
    performance.mark("runs-rendered");
  }
}

/** Durations of running runs move on between polls. */
function tickDurations() {
  for (const row of view.rows.values()) if (row.run.state === "RUNNING") row.cells.duration.textContent = runDuration(row.run);
}

// ------------------------------------------------------------------ filters

function setFilter(name, value) {
  view[name] = value;
  byId(name === "state" ? "f-state" : "f-kind").value = value;
  changed();
}

function changed() {
  view.generation += 1;
  view.runs = [];
  view.next = "";
  view.revision = null;
  writeQuery();
  render();
  poller.now();
}

const poller = new Poller("summary", pollSummary, { intervalMs: 2000 });

function main() {
  readQuery();
  const stateSelect = byId("f-state");
  for (const state of STATES) stateSelect.append(h("option", { value: state, text: state.replace("_", " ") }));
  const kindSelect = byId("f-kind");
  const kinds = new Set([...KINDS, view.kind].filter(Boolean));
  for (const kind of kinds) kindSelect.append(h("option", { value: kind, text: kind }));
  stateSelect.value = view.state;
  kindSelect.value = view.kind;
  byId("f-size").value = String(view.pageSize);
  stateSelect.addEventListener("change", () => setFilter("state", stateSelect.value));
  kindSelect.addEventListener("change", () => setFilter("kind", kindSelect.value));
  byId("f-size").addEventListener("change", (e) => {
    view.pageSize = Number(e.target.value);
    changed();
  });
  byId("filters").addEventListener("submit", (e) => e.preventDefault());
  byId("more").addEventListener("click", loadMore);
  setInterval(tickDurations, 1000);
  poller.start();
}

main();
