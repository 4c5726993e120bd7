// The submit form (/submit): the built-in kinds, the schema's limits next to each field (read
// from /openapi.json, which carries the schema's comments and limits), and the server's field
// errors (google.rpc.BadRequest) next to the fields they name. Values are sent as typed; the
// server is the one judge of a limit. A refused submit that may pass later (429, 503) is tried
// again as Retry-After says, with the same request_id, so it can never make two runs.
"use strict";
import { ApiError, Poller, api, backoffMs, banner, byId, explain, h, retryable, sleep } from "./common.js";

const MAX_ATTEMPTS = 5;
const SIM = { simulation: "spec.simulation", batch: "spec.batch.simulation", compare: "spec.compare.baseline", sweep: "spec.sweep.simulation" };
const DIAGNOSTIC = ["ticks", "tick_duration", "mode", "log_every", "progress_every", "fail_at_tick", "ignore_cancellation"];

/** input id -> [component schema, JSON property] whose description (comment and limits) is its hint. */
function schemaOf(id, kind) {
  const iterations = { batch: "runner.v1.BatchSpec", compare: "runner.v1.CompareSpec", sweep: "runner.v1.SweepSpec" }[kind];
  const table = {
    scenario: ["runner.v1.SimulationSpec", "scenario"],
    max_ticks: ["runner.v1.SimulationSpec", "maxTicks"],
    seed: ["runner.v1.SimulationSpec", "seed"],
    overrides: ["runner.v1.SimulationSpec", "configOverrides"],
    iterations: [iterations, "numIterations"],
    variant_scenario: ["runner.v1.SimulationSpec", "scenario"],
    variant_overrides: ["runner.v1.SimulationSpec", "configOverrides"],
    parameter: ["runner.v1.SweepSpec", "parameter"],
    values: ["runner.v1.SweepSpec", "values"],
    timeout: ["runner.v1.SubmitRunRequest", "timeout"],
  };
  for (const name of DIAGNOSTIC) table[name] = ["runner.v1.DiagnosticSpec", camel(name)];
  return table[id];
}

/** input id -> the request's field paths it stands for (a violation of any lands next to it). */
function pathsOf(id, kind) {
  const sim = SIM[kind];
  const variant = kind === "compare" ? "spec.compare.variant" : null;
  const paths = {
    scenario: [`${sim}.scenario`],
    max_ticks: [`${sim}.max_ticks`, variant && `${variant}.max_ticks`],
    seed: [`${sim}.seed`, variant && `${variant}.seed`],
    overrides: [`${sim}.config_overrides`],
    iterations: [`spec.${kind}.num_iterations`],
    variant_scenario: ["spec.compare.variant.scenario"],
    variant_overrides: ["spec.compare.variant.config_overrides"],
    parameter: ["spec.sweep.parameter"],
    values: ["spec.sweep.values"],
    timeout: ["timeout"],
  };
  for (const name of DIAGNOSTIC) paths[name] = [`spec.diagnostic.${name}`];
  return (paths[id] || []).filter(Boolean);
}

function camel(name) {
  return name.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
}

const form = {
  schemas: {},
  scenarios: [],
  kind() {
    return byId("kind").value;
  },
};

// ------------------------------------------------------------------ limits and visibility

function fieldBox(id) {
  return byId(id).closest(".field");
}

function hintOf(id) {
  const box = fieldBox(id);
  let hint = box.querySelector(".hint.limits");
  if (!hint) {
    hint = h("div", { class: "hint limits", id: `${id}-hint` });
    box.append(hint);
    byId(id).setAttribute("aria-describedby", `${id}-hint ${id}-error`);
  }
  return hint;
}

function showLimits() {
  const kind = form.kind();
  for (const input of byId("form").querySelectorAll("input, select, textarea")) {
    const where = schemaOf(input.id, kind);
    if (!where || !where[0]) continue;
    const property = ((form.schemas[where[0]] || {}).properties || {})[where[1]];
    if (!property) continue;
    hintOf(input.id).textContent = property.description || "";
    if (input.type === "number") {
      if (property.minimum !== undefined) input.min = property.minimum;
      if (property.maximum !== undefined) input.max = property.maximum;
    }
    if (property.maxLength !== undefined && input.tagName !== "SELECT") input.maxLength = property.maxLength;
  }
}

function showKind() {
  const kind = form.kind();
  for (const node of byId("form").querySelectorAll("[data-kinds]")) {
    node.hidden = !node.dataset.kinds.split(" ").includes(kind);
  }
  clearErrors();
  showLimits();
}

function fillScenarios() {
  for (const id of ["scenario", "variant_scenario"]) {
    const select = byId(id);
    const keep = select.value;
    select.replaceChildren(
      ...form.scenarios.map((s) => h("option", { value: s.name, text: s.error ? `${s.name} (cannot be loaded)` : s.name, disabled: s.error ? true : undefined })),
    );
    if (keep) select.value = keep;
  }
  describeScenario();
}

function describeScenario() {
  const chosen = form.scenarios.find((s) => s.name === byId("scenario").value);
  const sides = chosen ? (chosen.sides || []).map((side) => `${side.name}: ${(side.units || []).map((u) => `${u.count} ${u.unitType}`).join(", ")}`) : [];
  byId("scenario-about").textContent = chosen ? [chosen.description, sides.join(" · ")].filter(Boolean).join("\n") : "";
}

// ------------------------------------------------------------------ the request

class LocalError extends Error {
  constructor(id, message) {
    super(message);
    this.id = id;
  }
}

function value(id) {
  return byId(id).value.trim();
}

/** A number when the text is one, else the text itself (the server says what is wrong). */
function numeric(id) {
  const text = value(id);
  if (text === "") return undefined;
  return /^-?\d+(\.\d+)?$/.test(text) && Number.isSafeInteger(Number(text)) ? Number(text) : text;
}

function json(id, expect) {
  const text = value(id);
  if (!text) return undefined;
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LocalError(id, `not JSON: ${err.message}`);
  }
  if (expect === "object" && (parsed === null || typeof parsed !== "object" || Array.isArray(parsed))) throw new LocalError(id, "must be a JSON object");
  if (expect === "array" && !Array.isArray(parsed)) throw new LocalError(id, "must be a JSON array");
  return parsed;
}

function compact(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined && v !== ""));
}

function simulationSpec(prefix = "") {
  return compact({
    scenario: value(prefix ? `${prefix}scenario` : "scenario"),
    maxTicks: numeric("max_ticks"),
    seed: value("seed") || undefined,
    configOverrides: json(prefix ? `${prefix}overrides` : "overrides", "object"),
  });
}

function buildRequest() {
  const kind = form.kind();
  let spec;
  if (kind === "simulation") spec = { simulation: simulationSpec() };
  else if (kind === "batch") spec = { batch: compact({ simulation: simulationSpec(), numIterations: numeric("iterations") }) };
  else if (kind === "compare") spec = { compare: compact({ baseline: simulationSpec(), variant: simulationSpec("variant_"), numIterations: numeric("iterations") }) };
  else if (kind === "sweep") {
    spec = { sweep: compact({ simulation: simulationSpec(), parameter: value("parameter"), values: json("values", "array"), numIterations: numeric("iterations") }) };
  } else {
    const seconds = value("tick_duration");
    spec = {
      diagnostic: compact({
        ticks: numeric("ticks"),
        tickDuration: seconds ? (/^[0-9.]+$/.test(seconds) ? `${seconds}s` : seconds) : undefined,
        mode: value("mode"),
        logEvery: numeric("log_every"),
        progressEvery: numeric("progress_every"),
        failAtTick: numeric("fail_at_tick"),
        ignoreCancellation: byId("ignore_cancellation").checked || undefined,
      }),
    };
  }
  const timeout = value("timeout");
  return compact({ spec, timeout: timeout ? (/^[0-9.]+$/.test(timeout) ? `${timeout}s` : timeout) : undefined });
}

// ------------------------------------------------------------------ errors next to fields

function clearErrors() {
  for (const node of byId("form").querySelectorAll(".field-error[id$='-error']")) node.remove();
  for (const node of byId("form").querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  byId("form-errors").replaceChildren();
}

function fieldError(id, text) {
  const input = byId(id);
  input.setAttribute("aria-invalid", "true");
  let node = byId(`${id}-error`);
  if (!node) {
    node = h("div", { class: "field-error", id: `${id}-error`, role: "alert" });
    fieldBox(id).append(node);
  }
  node.textContent = node.textContent ? `${node.textContent}; ${text}` : text;
}

/** The visible input standing for a violation's field path (the longest match), or null. */
function inputFor(path) {
  const kind = form.kind();
  let best = null;
  let bestLength = -1;
  for (const input of byId("form").querySelectorAll("input, select, textarea")) {
    if (input.closest("[hidden]")) continue;
    for (const q of pathsOf(input.id, kind)) {
      const hit = path === q || path.startsWith(`${q}.`) || path.startsWith(`${q}[`);
      if (hit && q.length > bestLength) {
        best = input.id;
        bestLength = q.length;
      }
    }
  }
  return best;
}

function showViolations(err) {
  const loose = [];
  for (const v of err.violations) {
    const id = inputFor(v.field || "");
    if (id) fieldError(id, v.field.length > (pathsOf(id, form.kind())[0] || "").length + 1 ? `${v.field}: ${v.description}` : v.description);
    else loose.push(v.field ? `${v.field}: ${v.description}` : v.description);
  }
  if (!err.violations.length) loose.push(err.message);
  byId("form-errors").replaceChildren(...loose.map((text) => h("div", { text })));
  const first = byId("form").querySelector("[aria-invalid='true']");
  if (first) first.focus();
}

// ------------------------------------------------------------------ submit

function newRequestId() {
  if (crypto.randomUUID) return `web-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `web-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  let request;
  try {
    request = buildRequest();
  } catch (err) {
    if (err instanceof LocalError) {
      fieldError(err.id, err.message);
      byId(err.id).focus();
      return;
    }
    throw err;
  }
  request.requestId = newRequestId();
  const button = byId("submit");
  const state = byId("submit-state");
  button.disabled = true;
  try {
    for (let attempt = 1; ; attempt += 1) {
      state.textContent = attempt === 1 ? "Submitting…" : `Submitting (attempt ${attempt} of ${MAX_ATTEMPTS})…`;
      try {
        const run = await api("/v1/runs", { method: "POST", body: request });
        banner.clear("submit");
        state.textContent = "Submitted.";
        location.assign(`/runs/${encodeURIComponent(run.runId)}`);
        return;
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (err.status === 400 || !retryable(err) || attempt >= MAX_ATTEMPTS) {
          banner.clear("submit");
          state.textContent = "";
          if (err.status === 400) showViolations(err);
          else byId("form-errors").replaceChildren(h("div", { text: `${explain(err).title}: ${err.message}` }));
          return;
        }
        const wait = backoffMs(attempt, err.retryAfterS);
        banner.set("submit", { ...explain(err), text: `${err.message} The submit is tried again (same request id, so never twice).`, retryAt: Date.now() + wait });
        await sleep(wait);
      }
    }
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ start

async function loadOnce() {
  const [doc, scenarios] = await Promise.all([api("/openapi.json"), api("/v1/scenarios")]);
  form.schemas = (doc.components || {}).schemas || {};
  form.scenarios = scenarios.scenarios || [];
  fillScenarios();
  showLimits();
  loader.stop();
}

const loader = new Poller("load", loadOnce, { intervalMs: 60000 });

function main() {
  const kind = new URLSearchParams(location.search).get("kind");
  if (kind && [...byId("kind").options].some((o) => o.value === kind)) byId("kind").value = kind;
  byId("kind").addEventListener("change", showKind);
  byId("scenario").addEventListener("change", describeScenario);
  byId("form").addEventListener("submit", submit);
  byId("form").addEventListener("input", (e) => {
    if (e.target.id && byId(`${e.target.id}-error`)) {
      byId(`${e.target.id}-error`).remove();
      e.target.removeAttribute("aria-invalid");
    }
  });
  showKind();
  loader.start();
}

main();
