// Wiring tests of the three extension files against test doubles of ComfyUI's front-end API
// (app.registerExtension, api events, LiteGraph node types, addDOMWidget) and a minimal DOM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { register } from "node:module";

import { FakeElement, FakeResizeObserver, installDom } from "./helpers/fake_dom.mjs";

register("./helpers/comfy_hooks.mjs", import.meta.url);
installDom();

const extensions = [];
const api = new EventTarget();
const nodes = new Map();
const fakeApp = {
  registerExtension: (ext) => extensions.push(ext),
  rootGraph: { getNodeById: (id) => nodes.get(String(id)) ?? null },
};
globalThis.__deepgen1Fake = { app: fakeApp, api };

await import("../deepgen_rewards.js");
await import("../deepgen_loss_chart.js");
await import("../deepgen_reward_chart.js");
await import("../deepgen_float_digits.js");

/** A LiteGraph-like node class as ComfyUI builds one per node definition. */
function makeNodeType(comfyClass, inputWidgets = []) {
  const calls = [];
  class NodeType {
    constructor(id) {
      this.id = id;
      this.comfyClass = comfyClass;
      this.type = comfyClass;
      this.size = [200, 100];
      // ComfyUI adds the input widgets before onNodeCreated runs.
      this.widgets = inputWidgets.map(([name, value, options]) => ({ name, type: "number", value, options: { ...options } }));
      this.onNodeCreated?.();
    }
    addDOMWidget(name, type, element, options) {
      const w = { name, type, element, options };
      this.widgets.push(w);
      return w;
    }
    computeSize() {
      const h = this.widgets.reduce((acc, w) => acc + (w.options.getMinHeight?.() ?? 0), 30);
      return [180, h];
    }
    setSize(size) {
      this.size = size;
    }
    setDirtyCanvas() {
      calls.push("dirty");
    }
  }
  NodeType.prototype.onExecuted = function (message) {
    calls.push(["original onExecuted", message]);
  };
  return { NodeType, calls };
}

async function defineNode(comfyClass, nodeData = {}, inputWidgets = []) {
  const made = makeNodeType(comfyClass, inputWidgets);
  for (const ext of extensions) await ext.beforeRegisterNodeDef?.(made.NodeType, { name: comfyClass, ...nodeData }, fakeApp);
  return made;
}

test("extensions are registered under the DeepGen1 namespace", () => {
  assert.deepEqual(extensions.map((e) => e.name).sort(), ["DeepGen1.FloatDigits", "DeepGen1.LossChart", "DeepGen1.RewardChart", "DeepGen1.RewardsTable"]);
});

test("other node types are left alone", async () => {
  const made = makeNodeType("KSampler");
  const before = { ...Object.getOwnPropertyDescriptors(made.NodeType.prototype) };
  for (const ext of extensions) await ext.beforeRegisterNodeDef?.(made.NodeType, { name: "KSampler" }, fakeApp);
  assert.deepEqual(Object.keys(Object.getOwnPropertyDescriptors(made.NodeType.prototype)), Object.keys(before));
  assert.equal(made.NodeType.prototype.onExecuted, before.onExecuted.value);
  assert.equal(new made.NodeType(1).widgets.length, 0);
});

test("RewardScore: DOM widget, chained onExecuted, table rows", async () => {
  const { NodeType, calls } = await defineNode("RewardScore");
  const node = new NodeType(4);
  assert.equal(node.widgets.length, 1);
  const w = node.widgets[0];
  assert.equal(w.name, "deepgen1_rewards");
  assert.equal(w.serialize, false);
  assert.equal(w.options.serialize, false);
  assert.ok(w.element instanceof FakeElement);

  const message = {
    deepgen1_rewards: [
      { index: 0, total: 0.4, rewards: { clip: 0.3, ocr: null, preference: 5 }, best: false },
      { index: 1, total: 0.9, rewards: { clip: 0.35, ocr: 0.8, preference: 6 }, best: true },
    ],
  };
  node.onExecuted(message);
  assert.deepEqual(calls[0], ["original onExecuted", message], "the original onExecuted still runs");
  const rows = w.element.findAll("tr");
  assert.equal(rows.length, 3);
  assert.deepEqual(
    rows[0].children.map((c) => c.textContent),
    ["#", "total", "CLIP", "OCR", "pref."],
  );
  assert.deepEqual(
    rows[1].children.map((c) => c.textContent),
    ["0", "0.4", "0.3", "—", "5"],
  );
  assert.deepEqual(
    rows[2].children.map((c) => c.textContent),
    ["★ 1", "0.9", "0.35", "0.8", "6"],
  );
  assert.match(w.element.textContent, /best: #1 · total 0.9/);
  assert.ok(node.size[1] >= 24 + 3 * 20, "node grew to fit the table");

  node.onExecuted({ deepgen1_rewards: [{ index: 0, total: 1, rewards: {}, best: true }] });
  assert.equal(w.element.findAll("tr").length, 2, "a new result replaces the table");
  node.onExecuted({ images: [] }); // another output: table unchanged
  assert.equal(w.element.findAll("tr").length, 2);
});

test("DeepGenTrainLoRA: loss events draw per-task paths, done shows the LoRA path", async () => {
  const { NodeType } = await defineNode("DeepGenTrainLoRA");
  const node = new NodeType(3);
  nodes.set("3", node);
  const other = new (makeNodeType("KSampler").NodeType)(8);
  nodes.set("8", other);
  assert.equal(node.widgets.length, 1);
  const w = node.widgets[0];
  assert.equal(w.name, "deepgen1_loss_chart");
  assert.equal(w.serialize, false);

  for (const ext of extensions) ext.setup?.(fakeApp);
  const send = (type, detail) => api.dispatchEvent(new CustomEvent(type, { detail }));
  for (let step = 1; step <= 10; step++) {
    send("deepgen1.train_loss", {
      node: "3",
      step,
      total_steps: 20,
      loss: 1 / step,
      task: step % 2 ? "text2image" : "image2image",
      lr: 1e-4,
    });
  }
  send("deepgen1.train_loss", { node: "99", step: 1, loss: 1 }); // unknown node: ignored
  send("deepgen1.train_loss", { node: "8", step: 1, loss: 1 }); // not a training node: ignored
  send("deepgen1.train_loss", { bogus: true });
  assert.equal(other.widgets.length, 0);

  const svg = w.element.findAll("svg")[0];
  const paths = svg.findAll("path");
  assert.deepEqual(
    paths.map((p) => `${p.getAttribute("data-task")}/${p.getAttribute("data-kind")}`),
    ["text2image/raw", "text2image/ema", "image2image/raw", "image2image/ema"],
  );
  assert.ok(paths.every((p) => /^M[\d.]+,[\d.]+( L[\d.]+,[\d.]+)+$/.test(p.getAttribute("d"))));
  assert.match(w.element.textContent, /step 10\/20 · loss 0\.1 · ema [\d.]+ · lr 1\.00e-4 · image2image/);

  // toolbar: log scale and smoothing 0 (raw only)
  const [logBox, slider] = w.element.findAll("input");
  slider.value = "0";
  slider.dispatch("input");
  assert.equal(svg.findAll("path").length, 2);
  logBox.checked = true;
  logBox.dispatch("change");
  assert.ok(svg.findAll("text").some((t) => t.textContent === "0.1"), "log axis has a 0.1 tick");

  // The viewBox follows the SVG's laid-out size, so the plot spans the node's width.
  FakeResizeObserver.resize(svg, 500.2, 120);
  assert.equal(svg.getAttribute("viewBox"), "0 0 500 120");
  assert.ok(svg.findAll("line").length > 0);
  assert.equal(Number(svg.findAll("rect")[0].getAttribute("width")), 500 - 8 - 42, "plot = width - padding");
  FakeResizeObserver.resize(svg, 0, 0); // collapsed node: keeps the last size
  assert.equal(svg.getAttribute("viewBox"), "0 0 500 120");

  send("deepgen1.train_done", { node: "3", lora_path: "loras/deepgen_lora.safetensors" });
  assert.match(w.element.textContent, /done · saved loras\/deepgen_lora\.safetensors/);
  send("deepgen1.train_loss", { node: "3", step: 1, total_steps: 5, loss: 2, task: "text2image" });
  assert.equal(svg.findAll("path").length, 1, "a new run starts a fresh chart");
});

test("DeepGenTrainRL: reward events draw a line and a std band per reward, the total and KL", async () => {
  const { NodeType } = await defineNode("DeepGenTrainRL");
  const node = new NodeType(21);
  nodes.set("21", node);
  const lora = new (await defineNode("DeepGenTrainLoRA")).NodeType(22);
  nodes.set("22", lora);
  assert.deepEqual(node.widgets.map((w) => w.name), ["deepgen1_reward_chart"]);
  const w = node.widgets[0];
  assert.equal(w.serialize, false);
  for (const ext of extensions) ext.setup?.(fakeApp);
  const send = (type, detail) => api.dispatchEvent(new CustomEvent(type, { detail }));
  for (let step = 1; step <= 5; step++) {
    send("deepgen1.train_rewards", {
      node: "21",
      step,
      total_steps: 10,
      rewards: { brightness: { mean: 0.4 + step / 50, std: 0.03 }, saturation: { mean: 0.2, std: 0.01 } },
      total: { mean: 0.3 + step / 100, std: 0.02 },
      kl: step * 1e-6,
      lr: 3e-3,
    });
  }
  send("deepgen1.train_rewards", { node: "22", step: 1, rewards: {} }); // a LoRA training node: no reward chart
  assert.equal(lora.widgets.map((x) => x.name).includes("deepgen1_reward_chart"), false);
  const svg = w.element.findAll("svg")[0];
  const kinds = svg.findAll("path").map((p) => `${p.getAttribute("data-reward")}/${p.getAttribute("data-kind")}`);
  assert.deepEqual(kinds, ["brightness/band", "saturation/band", "brightness/mean", "saturation/mean", "total/mean", "kl/kl"]);
  assert.match(w.element.textContent, /step 5\/10 · total 0\.35 · brightness 0\.5±0\.03 · saturation 0\.2±0\.01 · kl 5\.00e-6/);
  assert.ok(svg.findAll("text").length > 3, "axis labels, the KL axis included");
  const [stdBox] = w.element.findAll("input");
  stdBox.checked = false;
  stdBox.dispatch("change");
  assert.equal(svg.findAll("path").filter((p) => p.getAttribute("data-kind") === "band").length, 0);
  FakeResizeObserver.resize(svg, 400, 150);
  assert.equal(svg.getAttribute("viewBox"), "0 0 400 150");
  send("deepgen1.train_done", { node: "21", lora_path: "loras/deepgen/my_deepgen_rl.safetensors" });
  assert.match(w.element.textContent, /done · saved loras\/deepgen\/my_deepgen_rl\.safetensors/);
  // "train_done" is shared: each chart takes only its own node's
  send("deepgen1.train_done", { node: "22", lora_path: "loras/deepgen_lora.safetensors" });
  assert.deepEqual(lora.widgets.map((x) => x.name), ["deepgen1_loss_chart"]);
  assert.deepEqual(node.widgets.map((x) => x.name), ["deepgen1_reward_chart"]);
  assert.doesNotMatch(w.element.textContent, /deepgen_lora\.safetensors/);
});

test("events for a training node inside a subgraph use colon ids", async () => {
  const { NodeType } = await defineNode("DeepGenTrainLoRA");
  const inner = new NodeType(5);
  const sub = { getNodeById: (id) => (String(id) === "5" ? inner : null) };
  nodes.set("12", { id: 12, subgraph: sub });
  api.dispatchEvent(new CustomEvent("deepgen1.train_loss", { detail: { node: "12:5", step: 1, loss: 0.5 } }));
  assert.match(inner.widgets[0].element.textContent, /step 1 · loss 0\.5/);
});

test("FLOAT widgets of DeepGen nodes get maxFractionDigits when they need more than 3 decimals", async () => {
  const input = {
    required: {
      learning_rate: ["FLOAT", { default: 1e-4, min: 1e-7, max: 1e-2, step: 1e-5, round: 1e-7 }],
      cfg: ["FLOAT", { default: 4.0, step: 0.1 }],
      steps: ["INT", { default: 500 }],
    },
    optional: { weight_decay: ["FLOAT", { default: 0.0, step: 0.0001 }] },
  };
  const widgets = [
    ["learning_rate", 1e-4, { step2: 1e-5, precision: 5, round: 1e-7 }],
    ["cfg", 4, { step2: 0.1, precision: 1 }],
    ["steps", 500, { step2: 1, precision: 0 }],
    ["weight_decay", 0, { step2: 0.0001, precision: 4 }],
  ];
  const { NodeType } = await defineNode("DeepGenTrainLoRA", { category: "DeepGen 1.0/training", input }, widgets);
  const node = new NodeType(30);
  const opts = Object.fromEntries(node.widgets.map((w) => [w.name, w.options]));
  assert.equal(opts.learning_rate.maxFractionDigits, 7); // round 1e-7
  assert.equal(opts.weight_decay.maxFractionDigits, 4);
  assert.equal(opts.cfg.maxFractionDigits, undefined, "3 decimals are enough: left to the front end");
  assert.equal(opts.steps.maxFractionDigits, undefined);
  assert.equal(node.widgets[0].value, 1e-4, "the value itself is untouched");

  // Another pack's node with the same input is left alone.
  const other = await defineNode("SomeTrainer", { category: "training", input }, widgets);
  assert.equal(new other.NodeType(31).widgets[0].options.maxFractionDigits, undefined);
});
