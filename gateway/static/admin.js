// The admin view (/admin): GET /v1/admin/status and POST /v1/admin/workers:restart with the
// token the operator enters (kept in sessionStorage: this tab only, gone when it closes).
// Restart asks for a confirmation; while the churn policy is BLOCKED it also needs the
// acknowledgement (acknowledge_override), as the runner requires.
"use strict";
import { ApiError, Poller, api, banner, byId, explain, h, number } from "./common.js";

const KEY = "runner.adminToken";
const view = { status: null };

function token() {
  return sessionStorage.getItem(KEY) || "";
}

function kv(id, pairs) {
  byId(id).replaceChildren(
    ...pairs.flatMap(([label, value, className]) => [h("dt", { text: label }), h("dd", { class: className || "", text: value == null || value === "" ? "—" : String(value) })]),
  );
}

function lower(value) {
  return String(value || "").toLowerCase();
}

function render(status) {
  view.status = status;
  const w = status.workers || {};
  const dog = status.watchdog || {};
  const res = status.resilience || {};
  const circuit = res.circuit || {};
  const db = res.database || {};
  kv("workers", [
    ["Size", number(w.size || 0)],
    ["Alive", number(w.alive || 0)],
    ["Busy", number(w.busy || 0)],
    ["Restarts (total)", number(w.restartsTotal || 0)],
  ]);
  const policy = dog.policyState || "POLICY_STATE_UNSPECIFIED";
  kv("policy", [
    ["State", lower(policy), `policy-${lower(policy)}`],
    ["Crashes in window", `${number(dog.restartsInWindow || 0)} in ${dog.window || "?"}`],
    ["Cooldown at", number(dog.cooldownThreshold || 0)],
    ["Blocked at", number(dog.blockThreshold || 0)],
    ["Cooldown remaining", dog.cooldownRemaining || "0s"],
    ["Recommended", dog.recommendedAction],
  ]);
  const circuitState = lower(String(circuit.state || "").replace("CIRCUIT_", ""));
  kv("circuit", [
    ["State", circuitState, `circuit-${circuitState}`],
    ["Failures", `${number(circuit.consecutiveFailures || 0)} of ${number(circuit.failureThreshold || 0)}`],
    ["Retry after", circuit.retryAfter || "0s"],
    ["Opened (total)", number(circuit.openedTotal || 0)],
    ["Last error", circuit.lastError],
    ["Writes failing", db.writesFailing ? `yes (${number(db.heldWrites || 0)} held)` : "no"],
  ]);
  kv("load", [
    ["Queued", `${number(status.queued || 0)} of ${number(res.maxQueued || 0)}`],
    ["Running", number(status.running || 0)],
    ["Draining", res.draining ? "yes" : "no"],
    ["Recommendation", res.recommendation],
    ["Reasons", (res.reasons || []).join("; ")],
  ]);
  const blocked = policy === "BLOCKED";
  byId("ack-field").hidden = !blocked;
  if (!blocked) byId("ack").checked = false;
  byId("admin").hidden = false;
}

async function poll() {
  if (!token()) return;
  try {
    render(await api("/v1/admin/status", { token: token() }));
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      byId("admin").hidden = true;
      banner.set("auth", { ...explain(err), level: "bad" });
      poller.stop();
      return;
    }
    throw err;
  }
  banner.clear("auth");
}

const poller = new Poller("status", poll, { intervalMs: 5000 });

function useToken(event) {
  event.preventDefault();
  const value = byId("token").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY, value);
  byId("token").value = "";
  byId("token-note").textContent = "Token set for this tab.";
  poller.start();
}

function forget() {
  sessionStorage.removeItem(KEY);
  poller.stop();
  byId("admin").hidden = true;
  banner.clear("auth");
  banner.clear("status");
  byId("token-note").textContent = "Token forgotten.";
}

function askRestart() {
  const blocked = view.status && (view.status.watchdog || {}).policyState === "BLOCKED";
  if (blocked && !byId("ack").checked) {
    byId("restart-state").textContent = "The churn policy is blocked: tick the acknowledgement to override it.";
    byId("ack").focus();
    return;
  }
  byId("restart").hidden = true;
  byId("confirm").hidden = false;
  byId("confirm").focus();
  byId("restart-state").textContent = "Running runs get the shutdown grace, then their workers are replaced.";
  clearTimeout(askRestart.timer);
  askRestart.timer = setTimeout(resetRestart, 10000);
}

function resetRestart() {
  byId("restart").hidden = false;
  byId("confirm").hidden = true;
}

async function restart() {
  clearTimeout(askRestart.timer);
  const button = byId("confirm");
  const state = byId("restart-state");
  button.disabled = true;
  state.textContent = "Restarting workers…";
  try {
    const answer = await api("/v1/admin/workers:restart", {
      method: "POST",
      token: token(),
      timeoutMs: 60000,
      body: { acknowledgeOverride: byId("ack").checked, reason: byId("reason").value.trim() },
    });
    render(answer.status || {});
    state.textContent = answer.overrideUsed ? "Workers restarted (override recorded in the audit log)." : "Workers restarted.";
  } catch (err) {
    const { title, text } = explain(err);
    state.textContent = `${title}: ${text}`;
    poller.now();
  } finally {
    button.disabled = false;
    resetRestart();
  }
}

function main() {
  byId("token-form").addEventListener("submit", useToken);
  byId("forget").addEventListener("click", forget);
  byId("restart").addEventListener("click", askRestart);
  byId("confirm").addEventListener("click", restart);
  if (token()) {
    byId("token-note").textContent = "Token set for this tab.";
    poller.start();
  }
}

main();
