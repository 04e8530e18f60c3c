// DeepGen 1.0 front end: the live reward chart of DeepGenTrainRL: per-step history of every reward's mean and
// std, the weighted total and the KL to the start model, and the chart's view model.  Pure module (no DOM);
// the geometry is ./chart_geometry.js, shared with the loss chart.

import {
  axisTicks,
  decimate,
  formatNumber,
  makeScale,
  plotArea,
  stepRange,
  toBandPath,
  toSvgPath,
  yDomain,
} from "./chart_geometry.js";

/** Colours: one per reward (fixed for the built-in ones, then a cycle); the total is white, KL grey. */
const REWARD_COLORS = {
  clip: "#4e9af1",
  ocr: "#f1a14e",
  preference: "#6fcf73",
  brightness: "#e5d14a",
  saturation: "#d46fd4",
};
const PALETTE = ["#56c9c9", "#e86464", "#9b8cf2", "#c9a356"];
export const TOTAL_COLOR = "#f0f0f0";
export const KL_COLOR = "#9a9a9a";

export function rewardColor(name, order = 0) {
  return REWARD_COLORS[name] ?? PALETTE[order % PALETTE.length];
}

/**
 * Steps of one RL run.  `add` takes a parsed `deepgen1.train_rewards` event.  Step 1 again, or any earlier
 * step after the run finished, starts over (a new run; a resumed run sends its earlier steps first, from step 1);
 * another step already there replaces its point.  Returns true when it started over.
 */
export class RewardHistory {
  constructor({ maxPoints = 4000 } = {}) {
    this.maxPoints = maxPoints;
    this.reset();
  }

  reset() {
    this.points = []; // [{step, rewards: {name: {mean, std}}, total: {mean, std}, kl}], by step
    this.names = [];
    this.last = null;
    this.done = false;
    this.loraPath = null;
  }

  add(evt) {
    let restarted = false;
    const lastStep = this.points.length ? this.points[this.points.length - 1].step : null;
    if (lastStep !== null && evt.step <= lastStep && (this.done || evt.step === 1)) {
      this.reset();
      restarted = true;
    }
    for (const name of Object.keys(evt.rewards)) if (!this.names.includes(name)) this.names.push(name);
    const point = { step: evt.step, rewards: evt.rewards, total: evt.total, kl: evt.kl };
    const at = this.points.findIndex((p) => p.step >= evt.step);
    if (at === -1) this.points.push(point);
    else if (this.points[at].step === evt.step) this.points[at] = point;
    else this.points.splice(at, 0, point);
    if (this.points.length > this.maxPoints) this.points = decimate(this.points, Math.floor(this.maxPoints / 2));
    this.last = evt;
    this.done = false;
    return restarted;
  }

  finish(loraPath) {
    this.done = true;
    this.loraPath = loraPath ?? null;
  }

  isEmpty() {
    return this.points.length === 0;
  }

  /** [{step, mean, std}] of reward `name` ("total" is the weighted total). */
  series(name) {
    return this.points.map((p) => ({ step: p.step, ...((name === "total" ? p.total : p.rewards[name]) ?? { mean: null, std: null }) }));
  }

  kl() {
    return this.points.map((p) => ({ step: p.step, kl: p.kl }));
  }
}

/** "step 12/40 · total 0.512 · brightness 0.512±0.031 · kl 1.2e-5" (or the waiting / done line). */
export function rewardStatusLine(history) {
  if (history.isEmpty()) return history.done ? "done" : "waiting for training to start…";
  const p = history.points[history.points.length - 1];
  const total = history.last?.totalSteps;
  const parts = [total ? `step ${p.step}/${total}` : `step ${p.step}`, `total ${formatNumber(p.total.mean, 4)}`];
  for (const name of history.names) {
    const r = p.rewards[name];
    if (r) parts.push(`${name} ${formatNumber(r.mean, 4)}±${formatNumber(r.std, 2)}`);
  }
  parts.push(`kl ${formatNumber(p.kl)}`);
  const line = parts.join(" · ");
  if (!history.done) return line;
  return `${history.loraPath ? `done · saved ${history.loraPath}` : "done"} — ${line}`;
}

/**
 * The chart's view model for an SVG of `width`×`height`: every reward's mean line and mean±std band and the
 * weighted total on the left axis, KL on its own right axis (it is orders of magnitude smaller).  Returns
 * `{width, height, plot, series: [{name, color, path, bandPath, last, dashed}], kl: {path, color, last} | null,
 * xTicks, yTicks, rightTicks, empty, status}`.
 */
export function buildRewardChart(history, { width = 320, height = 160, showStd = true, padding } = {}) {
  const pad = { top: 8, right: 40, bottom: 18, left: 42, ...(padding ?? {}) };
  const plot = plotArea(width, height, pad);
  const status = rewardStatusLine(history);
  const names = [...history.names];
  const lines = [...names.map((n) => ({ name: n, pts: history.series(n) })), { name: "total", pts: history.series("total") }];
  const values = lines.flatMap(({ pts }) =>
    pts.flatMap((p) => (showStd && p.std !== null && p.mean !== null ? [p.mean - p.std, p.mean + p.std] : [p.mean])),
  );
  const yd = yDomain(values, { robust: false });
  const view = { width, height, plot, series: [], kl: null, xTicks: [], yTicks: [], rightTicks: [], empty: yd === null, status };
  if (yd === null) return view;
  const [x0, x1] = stepRange(
    history.points.map((p) => p.step),
    history.last?.totalSteps ?? null,
  );
  const xs = makeScale([x0, x1], [plot.x0, plot.x1]);
  const ys = makeScale(yd, [plot.y1, plot.y0]);
  const clamp = [plot.y0, plot.y1];
  const maxDraw = Math.max(2, Math.ceil((plot.x1 - plot.x0) * 2));
  lines.forEach(({ name, pts }, order) => {
    const isTotal = name === "total";
    if (isTotal && names.length === 1) return; // one reward: the total is that reward times its weight
    const mean = decimate(pts.map((p) => ({ x: p.step, y: p.mean })), maxDraw);
    const band = decimate(pts, maxDraw);
    const bandPath =
      showStd && !isTotal
        ? toBandPath(
            band.map((p) => ({ x: p.step, y: p.mean === null || p.std === null ? null : p.mean + p.std })),
            band.map((p) => ({ x: p.step, y: p.mean === null || p.std === null ? null : p.mean - p.std })),
            xs,
            ys,
            clamp,
          )
        : "";
    view.series.push({
      name,
      color: isTotal ? TOTAL_COLOR : rewardColor(name, order),
      path: toSvgPath(mean, xs, ys, clamp),
      bandPath,
      dashed: isTotal,
      last: [...pts].reverse().find((p) => p.mean !== null)?.mean ?? null,
    });
  });
  Object.assign(view, axisTicks(plot, yd, [x0, x1], xs, ys));
  const kl = history.kl();
  const kd = yDomain(kl.map((p) => p.kl), { robust: false });
  if (kd !== null) {
    if (kl.every((p) => p.kl === null || p.kl >= 0)) kd[0] = Math.max(0, kd[0]); // KL ≥ 0: no negative tick
    const ks = makeScale(kd, [plot.y1, plot.y0]);
    view.kl = {
      color: KL_COLOR,
      path: toSvgPath(decimate(kl.map((p) => ({ x: p.step, y: p.kl })), maxDraw), xs, ks, clamp),
      last: [...kl].reverse().find((p) => p.kl !== null)?.kl ?? null,
    };
    view.rightTicks = [kd[0], (kd[0] + kd[1]) / 2, kd[1]].map((v) => ({ y: Math.round(ks(v) * 10) / 10, label: formatNumber(v, 2) }));
  }
  return view;
}
