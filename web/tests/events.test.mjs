import { test } from "node:test";
import assert from "node:assert/strict";

import {
  EVENTS,
  EVENT_PREFIX,
  NODE_CLASSES,
  UI_KEYS,
  finiteOrNull,
  nodeIdOf,
  parseDoneEvent,
  parseLossEvent,
  parseRewardsMessage,
} from "../lib/events.js";

test("names are namespaced deepgen1", () => {
  assert.equal(EVENT_PREFIX, "deepgen1.");
  for (const name of Object.values(EVENTS)) assert.ok(name.startsWith("deepgen1."), name);
  assert.equal(EVENTS.TRAIN_LOSS, "deepgen1.train_loss");
  assert.equal(EVENTS.TRAIN_DONE, "deepgen1.train_done");
  assert.equal(UI_KEYS.REWARDS, "deepgen1_rewards");
  assert.deepEqual({ ...NODE_CLASSES }, { REWARD_SCORE: "RewardScore", TRAIN_LORA: "DeepGenTrainLoRA", TRAIN_RL: "DeepGenTrainRL" });
  assert.equal(EVENTS.TRAIN_REWARDS, "deepgen1.train_rewards");
});

test("finiteOrNull and nodeIdOf", () => {
  assert.equal(finiteOrNull(1.5), 1.5);
  assert.equal(finiteOrNull("0.25"), 0.25);
  for (const v of [null, undefined, NaN, Infinity, "", "abc", true, {}, []]) assert.equal(finiteOrNull(v), null);
  assert.equal(nodeIdOf(12), "12");
  assert.equal(nodeIdOf(" 5:12 "), "5:12");
  for (const v of [null, undefined, "", NaN, {}]) assert.equal(nodeIdOf(v), null);
});

test("parseLossEvent accepts a CustomEvent or its detail", () => {
  const detail = { node: "7", step: 12, total_steps: 100, loss: 0.125, task: "image2image", lr: 1e-4 };
  const expected = { node: "7", step: 12, totalSteps: 100, loss: 0.125, task: "image2image", lr: 1e-4 };
  assert.deepEqual(parseLossEvent(detail), expected);
  assert.deepEqual(parseLossEvent(new CustomEvent(EVENTS.TRAIN_LOSS, { detail })), expected);
});

test("parseLossEvent defaults and bad payloads", () => {
  assert.deepEqual(parseLossEvent({ node: 3, step: 1.7, loss: null }), {
    node: "3",
    step: 1,
    totalSteps: null,
    loss: null,
    task: "train",
    lr: null,
  });
  assert.equal(parseLossEvent({ node: "3", step: 1, total_steps: 0 }).totalSteps, null);
  for (const bad of [null, 5, "x", {}, { node: "1" }, { step: 1 }, { node: "1", step: -1 }, { node: "", step: 1 }]) {
    assert.equal(parseLossEvent(bad), null, JSON.stringify(bad));
  }
});

test("parseDoneEvent", () => {
  assert.deepEqual(parseDoneEvent({ node: "7", lora_path: "/out/loras/x.safetensors" }), {
    node: "7",
    loraPath: "/out/loras/x.safetensors",
  });
  assert.deepEqual(parseDoneEvent(new CustomEvent(EVENTS.TRAIN_DONE, { detail: { node: 7 } })), { node: "7", loraPath: null });
  assert.equal(parseDoneEvent({ lora_path: "x" }), null);
  assert.equal(parseDoneEvent(null), null);
});

test("parseRewardsMessage", () => {
  assert.equal(parseRewardsMessage({ images: [] }), null, "other outputs are not ours");
  assert.equal(parseRewardsMessage(undefined), null);
  const rows = parseRewardsMessage({
    deepgen1_rewards: [
      { index: 1, total: 0.9, rewards: { clip: 0.31, ocr: null, preference: 5.5 }, best: true },
      { index: 0, total: "0.5", rewards: { clip: 0.2, ocr: 0.75, preference: NaN }, best: false },
      "junk",
    ],
  });
  assert.deepEqual(rows, [
    { index: 0, total: 0.5, rewards: { clip: 0.2, ocr: 0.75, preference: null }, best: false },
    { index: 1, total: 0.9, rewards: { clip: 0.31, ocr: null, preference: 5.5 }, best: true },
  ]);
  // ui lists of a node run on list inputs arrive concatenated, possibly nested one level
  const nested = parseRewardsMessage({ deepgen1_rewards: [[{ index: 0, total: 1 }], [{ index: 1, total: 2 }]] });
  assert.deepEqual(
    nested.map((r) => [r.index, r.total, r.best]),
    [
      [0, 1, false],
      [1, 2, false],
    ],
  );
  assert.deepEqual(parseRewardsMessage({ deepgen1_rewards: { total: 3 } }), [{ index: 0, total: 3, rewards: {}, best: false }]);
  assert.deepEqual(parseRewardsMessage({ deepgen1_rewards: null }), []);
});
