import { test } from "node:test";
import assert from "node:assert/strict";

import { floatDigitsByInput, fractionDigits, isDeepGenNodeDef, neededFractionDigits } from "../lib/float_digits.js";

test("fractionDigits counts the decimals of the shortest exact form", () => {
  assert.equal(fractionDigits(1e-4), 4);
  assert.equal(fractionDigits(1e-7), 7);
  assert.equal(fractionDigits(1.25e-7), 9);
  assert.equal(fractionDigits(-0.5), 1);
  assert.equal(fractionDigits(0.1 + 0.2), 17); // 0.30000000000000004: capped later
  assert.equal(fractionDigits(3), 0);
  assert.equal(fractionDigits(1e21), 0);
  for (const v of [NaN, Infinity, undefined, null, "0.001"]) assert.equal(fractionDigits(v), 0);
});

test("neededFractionDigits: null up to 3 decimals, else the most of default/step/round, capped", () => {
  assert.equal(neededFractionDigits({ default: 1e-4, step: 1e-5, round: 1e-7 }), 7);
  assert.equal(neededFractionDigits({ default: 1e-4 }), 4);
  assert.equal(neededFractionDigits({ default: 1.0, step: 0.01 }), null);
  assert.equal(neededFractionDigits({ default: 0.5, step: 0.001, round: false }), null);
  assert.equal(neededFractionDigits({ default: 0.1 + 0.2 }), 10);
  assert.equal(neededFractionDigits(undefined), null);
});

test("isDeepGenNodeDef and floatDigitsByInput", () => {
  assert.ok(isDeepGenNodeDef({ category: "DeepGen 1.0/training" }));
  assert.ok(isDeepGenNodeDef({ category: "DeepGen 1.0" }));
  assert.ok(!isDeepGenNodeDef({ category: "DeepGen 1.01" }));
  assert.ok(!isDeepGenNodeDef({ category: "sampling" }));
  assert.ok(!isDeepGenNodeDef(null));
  const nodeData = {
    input: {
      required: { lr: ["FLOAT", { default: 1e-4, step: 1e-5 }], cfg: ["FLOAT", { default: 4, step: 0.1 }], n: ["INT", { default: 1 }] },
      optional: { tiny: ["FLOAT", { default: 0, step: 1e-6 }], pick: [["a", "b"]] },
    },
  };
  assert.deepEqual(floatDigitsByInput(nodeData), { lr: 5, tiny: 6 });
  assert.deepEqual(floatDigitsByInput({}), {});
});
