// A run's result as tables (and a chart for a sweep), built from the result's JSON as text.
"use strict";
import { h, number } from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#d64545", "#2f6fd6", "#1f9d55", "#b7791f", "#805ad5", "#319795"];

export function renderResult(kind, result) {
  const parts = [];
  try {
    if (kind === "batch") parts.push(...tally(result));
    else if (kind === "compare") parts.push(...compare(result));
    else if (kind === "sweep") parts.push(...sweep(result));
    else if (kind === "simulation") parts.push(...simulation(result));
  } catch (err) {
    parts.length = 0; // an unexpected shape: the JSON below says it all
  }
  parts.push(h("details", { open: parts.length ? undefined : true }, h("summary", { text: "Result as JSON" }), h("pre", { text: JSON.stringify(result, null, 2) })));
  return h("div", { class: "result" }, ...parts);
}

function table(head, rows, numeric = []) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "stats" },
      h("thead", {}, h("tr", {}, ...head.map((text, i) => h("th", { class: numeric.includes(i) ? "num" : "", text })))),
      h("tbody", {}, ...rows.map((row) => h("tr", {}, ...row.map((text, i) => h("td", { class: numeric.includes(i) ? "num" : "", text: String(text) }))))),
    ),
  );
}

const p = (x) => number(x, 3);
const ci = (pair) => (Array.isArray(pair) && pair.length === 2 ? `${p(pair[0])} – ${p(pair[1])}` : "");
const meanStd = (d) => (d ? `${number(d.mean, 2)} ± ${number(d.std, 2)}` : "");
const range = (d) => (d ? `${number(d.min)} – ${number(d.max)}` : "");

function facts(pairs) {
  return h("dl", { class: "facts" }, ...pairs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })]));
}

/** One tally (a batch, or an arm of a compare, or a row of a sweep): sides, draws, ticks. */
function tally(result) {
  const sides = Object.entries(result.sides || {});
  const rows = sides.map(([side, s]) => [side, number(s.wins), p(s.win_probability), ci(s.win_ci95), meanStd(s.survivors_total)]);
  rows.push(["draw", number(result.draws), p(result.draw_probability), ci(result.draw_ci95), ""]);
  const out = [
    facts([
      ["Iterations", number(result.iterations)],
      ["Completed", number(result.completed)],
      ["Failed", number(result.failed_count || 0)],
      ["Ticks (mean ± std)", meanStd(result.ticks)],
      ["Ticks (min – max)", range(result.ticks)],
    ]),
    h("h3", { text: "Outcomes" }),
    table(["Side", "Wins", "P(win)", "95 % interval", "Survivors (mean ± std)"], rows, [1, 2]),
  ];
  if ((result.failed || []).length) {
    out.push(h("h3", { text: "Failed iterations" }), table(["Iteration", "Seed", "Error"], result.failed.map((f) => [number(f.iteration), f.seed, f.error])));
  }
  return out;
}

function compare(result) {
  const base = result.baseline || {};
  const variant = result.variant || {};
  const diff = (result.difference || {}).sides || {};
  const names = [...new Set([...Object.keys(base.sides || {}), ...Object.keys(variant.sides || {})])];
  const rows = names.map((side) => {
    const b = (base.sides || {})[side] || {};
    const v = (variant.sides || {})[side] || {};
    const d = diff[side] || {};
    return [side, p(b.win_probability), ci(b.win_ci95), p(v.win_probability), ci(v.win_ci95), p(d.win_probability), ci(d.ci95)];
  });
  const dd = result.difference || {};
  rows.push(["draw", p(base.draw_probability), ci(base.draw_ci95), p(variant.draw_probability), ci(variant.draw_ci95), p(dd.draw_probability), ci(dd.draw_ci95)]);
  return [
    facts([
      ["Iterations per arm", number(result.iterations)],
      ["Baseline", `${base.scenario || ""} (seed ${base.seed ?? ""})`],
      ["Variant", `${variant.scenario || ""} (seed ${variant.seed ?? ""})`],
    ]),
    h("h3", { text: "Win probability: variant − baseline" }),
    table(["Side", "Baseline", "95 %", "Variant", "95 %", "Difference", "95 %"], rows, [1, 3, 5]),
  ];
}

function sweep(result) {
  const rows = result.rows || [];
  const sides = [...new Set(rows.flatMap((r) => Object.keys(r.sides || {})))];
  const head = ["Value", ...sides.flatMap((s) => [`P(${s} wins)`, "95 %"]), "P(draw)", "Ticks (mean)", "Error"];
  const body = rows.map((r) => [
    JSON.stringify(r.value),
    ...sides.flatMap((s) => {
      const x = (r.sides || {})[s];
      return x ? [p(x.win_probability), ci(x.win_ci95)] : ["", ""];
    }),
    r.error ? "" : p(r.draw_probability),
    r.ticks ? number(r.ticks.mean, 1) : "",
    r.error || "",
  ]);
  return [
    facts([
      ["Parameter", result.parameter],
      ["Iterations per value", number(result.iterations)],
      ["Scenario", result.scenario],
    ]),
    h("h3", { text: "Win probability by value (95 % interval)" }),
    h("div", { class: "chart" }, chart(rows, sides, result.parameter)),
    table(head, body, [1, ...sides.map((_, i) => 1 + 2 * i), 1 + 2 * sides.length, 2 + 2 * sides.length]),
  ];
}

function simulation(result) {
  const survivors = Object.entries(result.survivors || {}).flatMap(([side, units]) =>
    Object.entries(units || {}).map(([unit, count]) => [side, unit, number(count)]),
  );
  const pairs = Object.entries(result)
    .filter(([, v]) => v === null || typeof v !== "object")
    .map(([k, v]) => [k.replace(/_/g, " "), typeof v === "number" ? number(v) : String(v)]);
  const out = [facts(pairs)];
  if (survivors.length) out.push(h("h3", { text: "Survivors" }), table(["Side", "Unit", "Count"], survivors, [2]));
  return out;
}

// ------------------------------------------------------------------ the sweep chart

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Win probability per side against the swept value, with the 95 % interval as error bars. */
export function chart(rows, sides, parameter) {
  const W = 640;
  const H = 280;
  const m = { l: 46, r: 14, t: 28, b: 42 };
  const ok = rows.filter((r) => !r.error);
  const numeric = ok.length > 0 && ok.every((r) => typeof r.value === "number");
  const xs = numeric ? ok.map((r) => r.value) : ok.map((_, i) => i);
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  const x = (v) => m.l + (hi === lo ? 0.5 : (v - lo) / (hi - lo)) * (W - m.l - m.r);
  const y = (v) => m.t + (1 - v) * (H - m.t - m.b);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `win probability by ${parameter}` });
  root.append(svg("title", {}, `Win probability by ${parameter}`));
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    root.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
    root.append(svg("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, t.toFixed(2)));
  }
  root.append(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: y(0), y2: y(0) }));
  root.append(svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: y(0) }));
  const step = Math.max(1, Math.ceil(ok.length / 12));
  ok.forEach((r, i) => {
    if (i % step) return;
    root.append(svg("text", { x: x(xs[i]), y: H - m.b + 16, "text-anchor": "middle" }, number(r.value, 2)));
  });
  root.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle" }, parameter || "value"));
  sides.forEach((side, k) => {
    const color = COLORS[k % COLORS.length];
    const points = [];
    const g = svg("g", { "data-side": side });
    ok.forEach((r, i) => {
      const s = (r.sides || {})[side];
      if (!s) return;
      const px = x(xs[i]);
      const [a, b] = Array.isArray(s.win_ci95) ? s.win_ci95 : [s.win_probability, s.win_probability];
      g.append(svg("line", { x1: px, x2: px, y1: y(a), y2: y(b), stroke: color, "stroke-width": 1.5 }));
      g.append(svg("line", { x1: px - 4, x2: px + 4, y1: y(a), y2: y(a), stroke: color }));
      g.append(svg("line", { x1: px - 4, x2: px + 4, y1: y(b), y2: y(b), stroke: color }));
      const dot = svg("circle", { cx: px, cy: y(s.win_probability), r: 3.5, fill: color });
      dot.append(svg("title", {}, `${side}: ${p(s.win_probability)} (${ci(s.win_ci95)}) at ${JSON.stringify(r.value)}`));
      g.append(dot);
      points.push(`${px},${y(s.win_probability)}`);
    });
    g.prepend(svg("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    root.append(g);
    const legend = svg("g", { class: "legend" });
    const lx = m.l + 8 + k * 110;
    legend.append(svg("rect", { x: lx, y: 8, width: 12, height: 12, fill: color }));
    legend.append(svg("text", { x: lx + 17, y: 18 }, `${side} wins`));
    root.append(legend);
  });
  return root;
}
