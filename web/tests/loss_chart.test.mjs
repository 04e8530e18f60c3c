import { test } from "node:test";
import assert from "node:assert/strict";

import { parseLossEvent } from "../lib/events.js";
import {
  LossHistory,
  buildChart,
  decimate,
  MIN_CHART_SIZE,
  ema,
  fitChartSize,
  formatNumber,
  logTicks,
  makeScale,
  niceTicks,
  statusLine,
  taskColor,
  toSvgPath,
  yDomain,
} from "../lib/loss_chart.js";

const close = (a, b, eps = 1e-9) => assert.ok(Math.abs(a - b) < eps, `${a} != ${b}`);

function loss(step, value, extra = {}) {
  return parseLossEvent({ node: "3", step, total_steps: 100, loss: value, task: "text2image", lr: 1e-4, ...extra });
}

test("ema is bias-corrected and skips missing values", () => {
  assert.deepEqual(ema([1, 2, 3], 0), [1, 2, 3]);
  const s = ema([2, 2, 2], 0.9);
  s.forEach((v) => close(v, 2)); // constant input stays constant thanks to the bias correction
  const t = ema([1, null, 3], 0.5);
  close(t[0], 1);
  assert.equal(t[1], null);
  // acc = 0.5*0.5 + 0.5*3 = 1.75; debias 1 - 0.25 = 0.75
  close(t[2], 1.75 / 0.75);
  assert.deepEqual(ema([], 0.9), []);
  assert.deepEqual(ema([NaN, Infinity], 0.9), [null, null]);
  close(ema([1, 3], 5)[1], ema([1, 3], 0.999)[1]); // weight clamped below 1
});

test("decimate keeps the last point and the size bound", () => {
  const pts = Array.from({ length: 1001 }, (_, i) => i);
  const d = decimate(pts, 100);
  assert.ok(d.length <= 101);
  assert.equal(d[0], 0);
  assert.equal(d[d.length - 1], 1000);
  assert.equal(decimate(pts.slice(0, 5), 10).length, 5);
});

test("LossHistory keeps per-task series, dedups steps, and resets on a new run", () => {
  const h = new LossHistory({ maxPoints: 50 });
  assert.ok(h.isEmpty());
  assert.equal(h.add(loss(1, 1.0)), false);
  h.add(loss(2, 0.9, { task: "image2image" }));
  h.add(loss(3, 0.8));
  h.add(loss(3, 0.7)); // same step again replaces
  assert.deepEqual(h.tasks(), ["text2image", "image2image"]);
  assert.deepEqual(h.series("text2image"), [
    { step: 1, loss: 1.0 },
    { step: 3, loss: 0.7 },
  ]);
  assert.deepEqual(h.series("nope"), []);
  assert.equal(h.add(loss(1, 2.0)), true, "step went backwards: a new run");
  assert.deepEqual(h.tasks(), ["text2image"]);
  h.finish("/loras/a.safetensors");
  assert.equal(h.loraPath, "/loras/a.safetensors");
  assert.equal(h.add(loss(5, 1.0)), true, "after done, the next event starts a new run");
  assert.equal(h.done, false);
  for (let i = 6; i < 500; i++) h.add(loss(i, 1 / i));
  assert.ok(h.series("text2image").length <= 50);
  assert.equal(h.series("text2image").at(-1).step, 499);
});

test("yDomain pads, handles flat data, log scale and outliers", () => {
  assert.equal(yDomain([]), null);
  assert.equal(yDomain([null, NaN]), null);
  const [a, b] = yDomain([1, 2]);
  close(a, 0.95);
  close(b, 2.05);
  assert.deepEqual(yDomain([0.5, 0.5]), [0.45, 0.55]);
  assert.deepEqual(yDomain([0, 0]), [-1, 1]);
  assert.equal(yDomain([0, -1], { logY: true }), null);
  const [la, lb] = yDomain([0.01, 1], { logY: true });
  assert.ok(la < 0.01 && lb > 1);
  const spiky = [1000, ...Array.from({ length: 99 }, (_, i) => 1 + i / 100)];
  const [, hi] = yDomain(spiky);
  assert.ok(hi < 100, `one spike must not flatten the curve (hi=${hi})`);
  assert.ok(yDomain(spiky, { robust: false })[1] > 1000);
});

test("scales and svg paths", () => {
  const xs = makeScale([0, 10], [0, 100]);
  const ys = makeScale([0, 1], [50, 0]);
  assert.equal(xs(5), 50);
  assert.equal(ys(1), 0);
  assert.equal(ys(null), null);
  const path = toSvgPath(
    [
      { x: 0, y: 0 },
      { x: 5, y: 0.5 },
      { x: 6, y: null },
      { x: 10, y: 1 },
      { x: 10, y: 2 },
    ],
    xs,
    ys,
    [0, 50],
  );
  assert.equal(path, "M0,50 L50,25 M100,0 L100,0");
  assert.equal(toSvgPath([], xs, ys), "");
  const logY = makeScale([0.01, 1], [100, 0], true);
  assert.equal(logY(0.1), 50);
  assert.equal(logY(0), null);
  assert.equal(logY(-1), null);
});

test("ticks and number formatting", () => {
  assert.deepEqual(niceTicks(0, 1, 4), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(0.95, 2.05, 4), [1, 1.2, 1.4, 1.6, 1.8, 2]);
  assert.deepEqual(niceTicks(0, 0.9, 3), [0, 0.2, 0.4, 0.6, 0.8]);
  assert.deepEqual(niceTicks(0, 1000, 4), [0, 200, 400, 600, 800, 1000]);
  assert.deepEqual(niceTicks(3, 3), [3]);
  assert.deepEqual(niceTicks(NaN, 1), []);
  assert.deepEqual(logTicks(0.005, 2), [0.01, 0.1, 1]);
  assert.deepEqual(logTicks(0.2, 0.5), [0.2, 0.5]);
  assert.deepEqual(logTicks(0, 1), []);
  assert.equal(formatNumber(0.031249), "0.0312");
  assert.equal(formatNumber(0.031249, 4), "0.03125");
  assert.equal(formatNumber(1e-4), "1.00e-4");
  assert.equal(formatNumber(123456), "1.23e5");
  assert.equal(formatNumber(1000), "1000");
  assert.equal(formatNumber(0), "0");
  assert.equal(formatNumber(null), "—");
  assert.equal(formatNumber(NaN), "—");
});

test("status line", () => {
  const h = new LossHistory();
  assert.match(statusLine(h), /waiting/);
  h.add(loss(1, 0.5));
  h.add(loss(2, null));
  assert.equal(statusLine(h, 0), "step 2/100 · loss nan · lr 1.00e-4 · text2image");
  assert.equal(statusLine(h, 0.5), "step 2/100 · loss nan · ema 0.5 · lr 1.00e-4 · text2image");
  h.finish("/x/lora.safetensors");
  assert.match(statusLine(h), /^done · saved \/x\/lora\.safetensors — step 2\/100/);
  const e = new LossHistory();
  e.finish(null);
  assert.equal(statusLine(e), "done");
});

test("buildChart: geometry inside the plot, one series per task, x axis to total_steps", () => {
  const h = new LossHistory();
  let view = buildChart(h, { width: 320, height: 160 });
  assert.equal(view.empty, true);
  assert.deepEqual(view.series, []);
  for (let s = 1; s <= 40; s++) {
    h.add(loss(s, 2 / s, { task: s % 2 ? "text2image" : "image2image" }));
  }
  view = buildChart(h, { width: 320, height: 160, smoothing: 0.6 });
  assert.equal(view.empty, false);
  assert.deepEqual(
    view.series.map((s) => s.task),
    ["text2image", "image2image"],
  );
  assert.equal(view.series[0].color, taskColor("text2image"));
  assert.notEqual(view.series[0].color, view.series[1].color);
  const { plot } = view;
  for (const s of view.series) {
    assert.match(s.rawPath, /^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+$/);
    assert.match(s.smoothPath, /^M/);
    for (const [, x, y] of s.rawPath.matchAll(/[ML]([\d.]+),([\d.]+)/g)) {
      assert.ok(+x >= plot.x0 - 0.05 && +x <= plot.x1 + 0.05, `x ${x}`);
      assert.ok(+y >= plot.y0 - 0.05 && +y <= plot.y1 + 0.05, `y ${y}`);
    }
  }
  // x axis spans 0..total_steps (100), so 40 steps fill ~40% of the width
  const lastX = Number(view.series[1].rawPath.split(" ").at(-1).slice(1).split(",")[0]);
  close(lastX, plot.x0 + (40 / 100) * (plot.x1 - plot.x0), 0.1);
  assert.ok(view.xTicks.length >= 2 && view.xTicks.every((t) => t.x >= plot.x0 && t.x <= plot.x1));
  assert.ok(view.yTicks.length >= 2 && view.yTicks.every((t) => t.y >= plot.y0 - 0.5 && t.y <= plot.y1 + 0.5));
  assert.equal(view.status, statusLine(h, 0.6));

  const noSmooth = buildChart(h, { smoothing: 0 });
  assert.ok(noSmooth.series.every((s) => s.smoothPath === ""));
  const log = buildChart(h, { logY: true });
  assert.ok(log.yTicks.every((t) => /^(1|0\.1|[\d.]+e-?\d+|[\d.]+)$/.test(t.label)));
});

test("buildChart on a log axis drops non-positive losses instead of failing", () => {
  const h = new LossHistory();
  h.add(loss(1, 0));
  h.add(loss(2, -1));
  assert.equal(buildChart(h, { logY: true }).empty, true);
  h.add(loss(3, 0.5));
  h.add(loss(4, 0.25));
  const v = buildChart(h, { logY: true, smoothing: 0 });
  assert.equal(v.series[0].rawPath.split("M").length - 1, 1);
});

test("fitChartSize: laid-out pixels become the viewBox, with a floor and a fallback", () => {
  assert.deepEqual(fitChartSize(337.4, 141.6), { width: 337, height: 142 });
  assert.deepEqual(fitChartSize(40, 20), MIN_CHART_SIZE);
  for (const [w, h] of [[0, 100], [100, 0], [NaN, 100], [undefined, 100], [100, Infinity]]) {
    assert.deepEqual(fitChartSize(w, h, { width: 320, height: 160 }), { width: 320, height: 160 });
  }
  // The geometry follows the size: the plot's right edge is `width - padding.right`.
  const h = new LossHistory();
  h.add(loss(1, 0.5));
  assert.equal(buildChart(h, fitChartSize(500, 200)).plot.x1, 492);
});

test("the fixed-noise validation loss is a series of its own, in its own colour", () => {
  const h = new LossHistory();
  h.add({ node: "1", step: 1, totalSteps: 4, loss: 3.9, task: "text2image", lr: 1e-4 });
  h.add({ node: "1", step: 2, totalSteps: 4, loss: 1.5, task: "val_loss", lr: 1e-4 });
  h.add({ node: "1", step: 2, totalSteps: 4, loss: 3.8, task: "text2image", lr: 1e-4 });
  const view = buildChart(h, { width: 300, height: 150, smoothing: 0 });
  const val = view.series.find((s) => s.task === "val_loss");
  assert.ok(val && val.rawPath.startsWith("M"));
  assert.equal(val.color, taskColor("val_loss"));
  assert.notEqual(taskColor("val_loss"), taskColor("text2image"));
  assert.equal(val.last, 1.5);
});
