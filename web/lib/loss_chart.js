// DeepGen 1.0 front end: loss history, EMA smoothing and SVG geometry for the live loss chart.
// Pure module (no DOM): `buildChart` returns a plain view model that the extension turns into SVG.
// The geometry (scales, ticks, paths, labels, sizes) is ./chart_geometry.js, shared with the reward chart.

import {
  MIN_CHART_SIZE,
  axisTicks,
  decimate,
  fitChartSize,
  formatNumber,
  logTicks,
  makeScale,
  niceTicks,
  plotArea,
  stepRange,
  toSvgPath,
  yDomain,
} from "./chart_geometry.js";

export { MIN_CHART_SIZE, decimate, fitChartSize, formatNumber, logTicks, makeScale, niceTicks, toSvgPath, yDomain };

/** Series colours: fixed for the known tasks, then a cycle. */
const TASK_COLORS = {
  text2image: "#4e9af1",
  image2image: "#f1a14e",
  val_loss: "#e86464", // the fixed-noise validation loss (sent with task "val_loss")
};
const PALETTE = ["#6fcf73", "#d46fd4", "#e5d14a", "#56c9c9", "#e86464"];

export function taskColor(task, order = 0) {
  return TASK_COLORS[task] ?? PALETTE[order % PALETTE.length];
}

/**
 * Bias-corrected exponential moving average (TensorBoard-style), per point.
 * `weight` in [0, 1): 0 = no smoothing.  Null/non-finite values give null and are skipped.
 */
export function ema(values, weight) {
  const w = Number.isFinite(weight) ? Math.min(Math.max(weight, 0), 0.999) : 0;
  const out = new Array(values.length);
  let acc = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined || !Number.isFinite(v)) {
      out[i] = null;
      continue;
    }
    acc = acc * w + (1 - w) * v;
    n += 1;
    out[i] = w === 0 ? v : acc / (1 - Math.pow(w, n));
  }
  return out;
}

/**
 * Loss points per task for one training node.  `add` takes a parsed `deepgen1.train_loss`
 * event and returns true when it started a new run (step went backwards, or the previous run
 * finished), which clears the history.
 */
export class LossHistory {
  constructor({ maxPoints = 4000 } = {}) {
    this.maxPoints = maxPoints;
    this.reset();
  }

  reset() {
    this.byTask = new Map();
    this.last = null; // last parsed event
    this.done = false;
    this.loraPath = null;
    this.count = 0;
  }

  add(evt) {
    let restarted = false;
    if (this.done || (this.last !== null && evt.step < this.last.step)) {
      this.reset();
      restarted = true;
    }
    let pts = this.byTask.get(evt.task);
    if (!pts) {
      pts = [];
      this.byTask.set(evt.task, pts);
    }
    if (pts.length > 0 && pts[pts.length - 1].step === evt.step) pts[pts.length - 1] = { step: evt.step, loss: evt.loss };
    else pts.push({ step: evt.step, loss: evt.loss });
    if (pts.length > this.maxPoints) this.byTask.set(evt.task, decimate(pts, Math.floor(this.maxPoints / 2)));
    this.last = evt;
    this.count += 1;
    return restarted;
  }

  finish(loraPath) {
    this.done = true;
    this.loraPath = loraPath ?? null;
  }

  tasks() {
    return [...this.byTask.keys()];
  }

  series(task) {
    return this.byTask.get(task) ?? [];
  }

  isEmpty() {
    return this.count === 0;
  }
}

/** One status line for the node, e.g. "step 120/1000 · loss 0.0312 · ema 0.0330 · lr 1.00e-4 · text2image". */
export function statusLine(history, smoothing = 0) {
  if (history.isEmpty()) return history.done ? doneLine(history) : "waiting for training to start…";
  const e = history.last;
  const parts = [e.totalSteps ? `step ${e.step}/${e.totalSteps}` : `step ${e.step}`];
  parts.push(`loss ${e.loss === null ? "nan" : formatNumber(e.loss, 4)}`);
  if (smoothing > 0) {
    const pts = history.series(e.task);
    const sm = ema(pts.map((p) => p.loss), smoothing);
    const lastSm = [...sm].reverse().find((v) => v !== null);
    if (lastSm !== undefined) parts.push(`ema ${formatNumber(lastSm, 4)}`);
  }
  if (e.lr !== null) parts.push(`lr ${formatNumber(e.lr)}`);
  parts.push(e.task);
  const line = parts.join(" · ");
  return history.done ? `${doneLine(history)} — ${line}` : line;
}

function doneLine(history) {
  return history.loraPath ? `done · saved ${history.loraPath}` : "done";
}

/**
 * The chart's view model: geometry for an SVG of `width`×`height` (viewBox units).
 * Options: `smoothing` (EMA weight, 0..0.999), `logY`, `padding` {top, right, bottom, left}.
 * Returns `{width, height, plot: {x0, y0, x1, y1}, series: [{task, color, rawPath, smoothPath,
 * last}], xTicks: [{x, label}], yTicks: [{y, label}], empty, status}`.
 */
export function buildChart(history, { width = 320, height = 160, smoothing = 0.9, logY = false, padding } = {}) {
  const pad = { top: 8, right: 8, bottom: 18, left: 42, ...(padding ?? {}) };
  const plot = plotArea(width, height, pad);
  const status = statusLine(history, smoothing);
  const tasks = history.tasks();
  const all = tasks.flatMap((t) => history.series(t));
  const yd = yDomain(
    all.map((p) => p.loss),
    { logY },
  );
  const view = { width, height, plot, series: [], xTicks: [], yTicks: [], empty: yd === null, status };
  if (yd === null) return view;

  const steps = all.map((p) => p.step);
  const total = history.last?.totalSteps ?? null;
  const [x0, x1] = stepRange(steps, total);
  const xs = makeScale([x0, x1], [plot.x0, plot.x1]);
  const ys = makeScale(yd, [plot.y1, plot.y0], logY);
  const clamp = [plot.y0, plot.y1];
  const maxDraw = Math.max(2, Math.ceil((plot.x1 - plot.x0) * 2));

  tasks.forEach((task, order) => {
    const pts = history.series(task);
    const sm = ema(
      pts.map((p) => p.loss),
      smoothing,
    );
    const raw = decimate(
      pts.map((p) => ({ x: p.step, y: p.loss })),
      maxDraw,
    );
    const smooth = decimate(
      pts.map((p, i) => ({ x: p.step, y: sm[i] })),
      maxDraw,
    );
    const lastLoss = [...pts].reverse().find((p) => p.loss !== null)?.loss ?? null;
    view.series.push({
      task,
      color: taskColor(task, order),
      rawPath: toSvgPath(raw, xs, ys, clamp),
      smoothPath: smoothing > 0 ? toSvgPath(smooth, xs, ys, clamp) : "",
      last: lastLoss,
    });
  });

  Object.assign(view, axisTicks(plot, yd, [x0, x1], xs, ys, logY));
  return view;
}

