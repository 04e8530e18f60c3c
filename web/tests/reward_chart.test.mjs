import { test } from "node:test";
import assert from "node:assert/strict";

import { toBandPath } from "../lib/chart_geometry.js";
import { parseRewardsEvent } from "../lib/events.js";
import { makeScale } from "../lib/loss_chart.js";
import { KL_COLOR, RewardHistory, TOTAL_COLOR, buildRewardChart, rewardColor, rewardStatusLine } from "../lib/reward_chart.js";

function step(n, rewards, extra = {}) {
  return parseRewardsEvent({ node: "4", step: n, total_steps: 10, rewards, total: { mean: 0.5, std: 0.1 }, kl: n * 1e-6, lr: 1e-4, ...extra });
}

const two = (n) => ({ brightness: { mean: 0.4 + n / 100, std: 0.05 }, clip: { mean: 0.2, std: 0.02 } });

test("parseRewardsEvent keeps per-reward mean/std and turns NaN/missing into null", () => {
  const e = parseRewardsEvent(
    new CustomEvent("deepgen1.train_rewards", {
      detail: { node: 4, step: 2.0, total_steps: 8, rewards: { ocr: { mean: null, std: "x" }, clip: { mean: 0.3, std: 0.01 } }, total: { mean: 0.3 }, kl: 2e-6 },
    }),
  );
  assert.deepEqual(e, {
    node: "4",
    step: 2,
    totalSteps: 8,
    rewards: { ocr: { mean: null, std: null }, clip: { mean: 0.3, std: 0.01 } },
    total: { mean: 0.3, std: null },
    kl: 2e-6,
    lr: null,
  });
  assert.equal(parseRewardsEvent({ node: "4" }), null);
  assert.equal(parseRewardsEvent({ step: 1 }), null);
  assert.deepEqual(parseRewardsEvent({ node: "1", step: 1, rewards: [1] }).rewards, {});
});

test("RewardHistory: replaces a step sent again, keeps order, restarts on a new run", () => {
  const h = new RewardHistory();
  assert.ok(h.isEmpty());
  for (const n of [1, 2, 3]) assert.equal(h.add(step(n, two(n))), false);
  assert.deepEqual(h.names, ["brightness", "clip"]);
  h.add(step(3, two(30))); // the same step again replaces
  assert.deepEqual(h.series("brightness").map((p) => p.step), [1, 2, 3]);
  assert.equal(h.series("brightness")[2].mean, 0.7);
  assert.deepEqual(h.series("total")[0], { step: 1, mean: 0.5, std: 0.1 });
  assert.deepEqual(h.kl().map((p) => p.kl), [1e-6, 2e-6, 3e-6]);
  assert.deepEqual(h.series("ocr")[0], { step: 1, mean: null, std: null }); // unknown: gaps
  // a resumed run replays its earlier steps from step 1: a fresh history, the same points again
  assert.equal(h.add(step(1, two(1))), true);
  h.add(step(2, two(2)));
  h.add(step(3, two(3)));
  h.add(step(4, two(4)));
  assert.deepEqual(h.series("clip").map((p) => p.step), [1, 2, 3, 4]);
  // after the run finished, any earlier step starts a new chart
  h.finish("loras/deepgen/x.safetensors");
  assert.match(rewardStatusLine(h), /^done · saved loras\/deepgen\/x\.safetensors — step 4\/10 · total 0\.5 · brightness 0\.44±0\.05 · clip 0\.2±0\.02 · kl 4\.00e-6$/);
  assert.equal(h.add(step(2, { brightness: { mean: 0.1, std: 0 } })), true);
  assert.deepEqual(h.names, ["brightness"]);
  assert.equal(rewardStatusLine(new RewardHistory()), "waiting for training to start…");
});

test("toBandPath: a closed polygon upper edge then lower edge, split at gaps", () => {
  const xs = makeScale([0, 10], [0, 100]);
  const ys = makeScale([0, 1], [100, 0]);
  const up = [{ x: 0, y: 0.6 }, { x: 5, y: 0.7 }, { x: 10, y: 0.8 }];
  const lo = [{ x: 0, y: 0.4 }, { x: 5, y: 0.5 }, { x: 10, y: 0.6 }];
  assert.equal(toBandPath(up, lo, xs, ys), "M0,40 L50,30 L100,20 L100,40 L50,50 L0,60 Z");
  const gap = [{ x: 0, y: 0.6 }, { x: 5, y: null }, { x: 10, y: 0.8 }];
  assert.equal(toBandPath(gap, lo, xs, ys), "M0,40 L0,60 Z M100,20 L100,40 Z");
  assert.equal(toBandPath(up, lo, xs, ys, [35, 55]), "M0,40 L50,35 L100,35 L100,40 L50,50 L0,55 Z");
  assert.equal(toBandPath([], [], xs, ys), "");
});

test("buildRewardChart: a line and a band per reward, the total dashed, KL on its own right axis", () => {
  const h = new RewardHistory();
  for (let n = 1; n <= 6; n++) h.add(step(n, two(n), { total: { mean: 0.3 + n / 100, std: 0.04 } }));
  const v = buildRewardChart(h, { width: 300, height: 150 });
  assert.equal(v.empty, false);
  assert.deepEqual(
    v.series.map((s) => [s.name, s.color, s.dashed, !!s.bandPath]),
    [
      ["brightness", rewardColor("brightness"), false, true],
      ["clip", rewardColor("clip", 1), false, true],
      ["total", TOTAL_COLOR, true, false],
    ],
  );
  for (const s of v.series) assert.match(s.path, /^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+){5}$/);
  assert.match(v.series[0].bandPath, /^M.* Z$/);
  // every mean±std lies inside the plot (the y range holds the bands)
  const nums = v.series.flatMap((s) => `${s.path} ${s.bandPath}`.match(/[\d.]+,[\d.]+/g)).map((p) => Number(p.split(",")[1]));
  assert.ok(nums.every((y) => y >= v.plot.y0 - 1e-9 && y <= v.plot.y1 + 1e-9));
  assert.equal(v.series[0].last, 0.46);
  // brightness rises: the last point is higher on screen (smaller y) than the first
  const ys = v.series[0].path.match(/,([\d.]+)/g).map((s) => Number(s.slice(1)));
  assert.ok(ys[ys.length - 1] < ys[0]);
  assert.equal(v.kl.color, KL_COLOR);
  assert.match(v.kl.path, /^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+){5}$/);
  assert.equal(v.kl.last, 6e-6);
  assert.equal(v.rightTicks.length, 3);
  const fromZero = new RewardHistory();
  for (let n = 1; n <= 3; n++) fromZero.add(step(n, two(n), { kl: (n - 1) * 1e-6 })); // step 1: KL 0 exactly
  const kt = buildRewardChart(fromZero).rightTicks.map((t) => t.label);
  assert.equal(kt[0], "0", `KL is never negative: its axis starts at 0 (${kt})`);
  assert.ok(v.xTicks.length > 0 && v.yTicks.length > 0);
  assert.match(v.status, /^step 6\/10 · total 0\.36 · brightness 0\.46±0\.05 · clip 0\.2±0\.02 · kl 6\.00e-6$/);
  // std off: no bands; one reward: no separate total line
  assert.ok(buildRewardChart(h, { showStd: false }).series.every((s) => s.bandPath === ""));
  const one = new RewardHistory();
  one.add(step(1, { brightness: { mean: 0.5, std: 0.1 } }));
  assert.deepEqual(
    buildRewardChart(one).series.map((s) => s.name),
    ["brightness"],
  );
  assert.equal(buildRewardChart(new RewardHistory()).empty, true);
});
