// DeepGen 1.0 front end: chart geometry shared by the live charts (loss, rewards): scales, ticks, SVG path
// strings, number labels, the plot box and the viewBox size.  Pure module (no DOM).

/** Keep at most `maxPoints` points: every other one is dropped, the last one always kept. */
export function decimate(points, maxPoints) {
  if (points.length <= maxPoints) return points;
  const stride = Math.ceil(points.length / maxPoints);
  const out = [];
  for (let i = 0; i < points.length; i += stride) out.push(points[i]);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
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


/** The plot box inside a `width`×`height` chart with `pad` {top, right, bottom, left}. */
export function plotArea(width, height, pad) {
  return { x0: pad.left, y0: pad.top, x1: width - pad.right, y1: height - pad.bottom };
}

/** The x range of a chart of `steps`: from 0 (or the first step) to the run's last step when known. */
export function stepRange(steps, totalSteps = null) {
  let x0 = Math.min(...steps);
  let x1 = Math.max(totalSteps ?? -Infinity, ...steps);
  if (totalSteps !== null) x0 = Math.min(x0, 0);
  if (x0 === x1) x1 = x0 + 1;
  return [x0, x1];
}

/** Tick marks of both axes: y ticks inside the plot (log or nice), integer step ticks on x. */
export function axisTicks(plot, yd, [x0, x1], xs, ys, logY = false) {
  const yt = logY ? logTicks(yd[0], yd[1]) : niceTicks(yd[0], yd[1], 4);
  return {
    yTicks: yt
      .map((v) => ({ y: ys(v), label: formatNumber(v) }))
      .filter((t) => t.y !== null && t.y >= plot.y0 - 0.5 && t.y <= plot.y1 + 0.5)
      .map((t) => ({ y: r1(t.y), label: t.label })),
    xTicks: niceTicks(x0, x1, 4)
      .filter((v) => Number.isInteger(v))
      .map((v) => ({ x: r1(xs(v)), label: formatNumber(v) })),
  };
}

/**
 * A closed SVG path `d` of the band between `upper` and `lower` ([{x, y}], same x order): along the upper
 * edge, back along the lower one.  Points where either edge is missing split the band into pieces.
 */
export function toBandPath(upper, lower, xScale, yScale, yClamp = null) {
  const lo = yClamp ? Math.min(yClamp[0], yClamp[1]) : -Infinity;
  const hi = yClamp ? Math.max(yClamp[0], yClamp[1]) : Infinity;
  const clampY = (y) => r1(Math.min(Math.max(y, lo), hi));
  const pieces = [];
  let run = [];
  upper.forEach((p, i) => {
    const x = xScale(p.x);
    const a = yScale(p.y);
    const b = yScale(lower[i]?.y);
    if (x === null || a === null || b === null) {
      if (run.length) pieces.push(run);
      run = [];
      return;
    }
    run.push([r1(x), clampY(a), clampY(b)]);
  });
  if (run.length) pieces.push(run);
  return pieces
    .map((pts) => {
      const top = pts.map(([x, a], i) => `${i ? "L" : "M"}${x},${a}`);
      const bottom = [...pts].reverse().map(([x, , b]) => `L${x},${b}`);
      return [...top, ...bottom, "Z"].join(" ");
    })
    .join(" ");
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
