// DeepGen 1.0 front end: loss history, EMA smoothing and SVG geometry for the live loss chart.
// Pure module (no DOM): `buildChart` returns a plain view model that the extension turns into SVG.

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

/** Keep at most `maxPoints` points: every other one is dropped, the last one always kept. */
export function decimate(points, maxPoints) {
  if (points.length <= maxPoints) return points;
  const stride = Math.ceil(points.length / maxPoints);
  const out = [];
  for (let i = 0; i < points.length; i += stride) out.push(points[i]);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
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

function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Y range [min, max] of `values` (finite, and > 0 when `logY`), in data units.  With many points
 * the 1st–99th percentile range is used so that a single early spike does not flatten the curve
 * (points outside are clamped to the plot edge).  Returns null when nothing is plottable.
 */
export function yDomain(values, { logY = false, robust = true } = {}) {
  const vals = values.filter((v) => v !== null && Number.isFinite(v) && (!logY || v > 0)).sort((a, b) => a - b);
  if (vals.length === 0) return null;
  const useQ = robust && vals.length >= 50;
  let lo = useQ ? quantile(vals, 0.01) : vals[0];
  let hi = useQ ? quantile(vals, 0.99) : vals[vals.length - 1];
  if (logY) {
    let a = Math.log10(lo);
    let b = Math.log10(hi);
    if (a === b) {
      a -= 0.5;
      b += 0.5;
    } else {
      const pad = (b - a) * 0.05;
      a -= pad;
      b += pad;
    }
    return [Math.pow(10, a), Math.pow(10, b)];
  }
  if (lo === hi) {
    const d = Math.abs(lo) * 0.1 || 1;
    return [lo - d, hi + d];
  }
  const pad = (hi - lo) * 0.05;
  return [lo - pad, hi + pad];
}

/** A mapping from data to pixels; `log` maps log10 linearly.  Non-plottable input gives null. */
export function makeScale([d0, d1], [r0, r1], log = false) {
  const f = log ? (v) => (v > 0 ? Math.log10(v) : NaN) : (v) => v;
  const a = f(d0);
  const b = f(d1);
  const span = b - a || 1;
  return (v) => {
    if (v === null || v === undefined || !Number.isFinite(v)) return null;
    const t = f(v);
    if (!Number.isFinite(t)) return null;
    return r0 + ((t - a) / span) * (r1 - r0);
  };
}

const r1 = (v) => Math.round(v * 10) / 10;

/**
 * An SVG path `d` string through `points` ([{x, y}] in data units).  Points whose x or y maps to
 * null (missing loss, non-positive value on a log axis) break the line; y is clamped to `yClamp`
 * ([top, bottom] in pixels) when given.
 */
export function toSvgPath(points, xScale, yScale, yClamp = null) {
  const lo = yClamp ? Math.min(yClamp[0], yClamp[1]) : -Infinity;
  const hi = yClamp ? Math.max(yClamp[0], yClamp[1]) : Infinity;
  const parts = [];
  let pen = false;
  for (const p of points) {
    const x = xScale(p.x);
    const y = yScale(p.y);
    if (x === null || y === null) {
      pen = false;
      continue;
    }
    parts.push(`${pen ? "L" : "M"}${r1(x)},${r1(Math.min(Math.max(y, lo), hi))}`);
    pen = true;
  }
  return parts.join(" ");
}

/** About `count` round tick values covering [min, max] (1/2/5 × 10^k steps). */
export function niceTicks(min, max, count = 4) {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (min === max) return [min];
  if (min > max) [min, max] = [max, min];
  const raw = (max - min) / Math.max(count, 1);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const norm = raw / mag;
  // thresholds at the geometric means of 1, 2, 5, 10 (as d3 does): the step closest to `raw`
  const step = (norm >= Math.sqrt(50) ? 10 : norm >= Math.sqrt(10) ? 5 : norm >= Math.SQRT2 ? 2 : 1) * mag;
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : Number(v.toPrecision(12)));
  }
  return ticks;
}

/** Powers of ten within [min, max] for a log axis (plus the ends when fewer than two). */
export function logTicks(min, max) {
  if (!(min > 0) || !(max > 0)) return [];
  const ticks = [];
  for (let k = Math.ceil(Math.log10(min)); k <= Math.floor(Math.log10(max)); k++) ticks.push(Math.pow(10, k));
  if (ticks.length < 2) return [min, max];
  return ticks;
}

/** Compact numbers for labels: 3 significant digits, exponent form for very small/large values. */
export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  if (value === 0) return "0";
  const a = Math.abs(value);
  if (a >= 1e4 || a < 1e-3) return value.toExponential(Math.max(digits - 1, 0)).replace("e+", "e");
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(digits)));
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
  const plot = { x0: pad.left, y0: pad.top, x1: width - pad.right, y1: height - pad.bottom };
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
  let x0 = Math.min(...steps);
  let x1 = Math.max(total ?? -Infinity, ...steps);
  if (total !== null) x0 = Math.min(x0, 0);
  if (x0 === x1) x1 = x0 + 1;
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

  const yt = logY ? logTicks(yd[0], yd[1]) : niceTicks(yd[0], yd[1], 4);
  view.yTicks = yt
    .map((v) => ({ y: ys(v), label: formatNumber(v) }))
    .filter((t) => t.y !== null && t.y >= plot.y0 - 0.5 && t.y <= plot.y1 + 0.5)
    .map((t) => ({ y: r1(t.y), label: t.label }));
  view.xTicks = niceTicks(x0, x1, 4)
    .filter((v) => Number.isInteger(v))
    .map((v) => ({ x: r1(xs(v)), label: formatNumber(v) }));
  return view;
}

/** Smallest chart the axes and labels fit in (viewBox units = CSS px). */
export const MIN_CHART_SIZE = Object.freeze({ width: 120, height: 60 });

/**
 * The viewBox size for an SVG laid out at `width`×`height` CSS px (from a ResizeObserver), so one
 * viewBox unit stays one pixel and labels keep their size. Sizes that are missing, not finite or 0
 * (a hidden or collapsed node) give `fallback`; others are rounded and raised to MIN_CHART_SIZE.
 */
export function fitChartSize(width, height, fallback = { width: 320, height: 160 }) {
  const ok = (v) => typeof v === "number" && Number.isFinite(v) && v > 0;
  if (!ok(width) || !ok(height)) return { ...fallback };
  return {
    width: Math.max(MIN_CHART_SIZE.width, Math.round(width)),
    height: Math.max(MIN_CHART_SIZE.height, Math.round(height)),
  };
}
