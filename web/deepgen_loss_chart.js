// DeepGen 1.0: live training-loss chart on the DeepGenTrainLoRA node.
// Fed by websocket events "deepgen1.train_loss" {node, step, total_steps, loss, task, lr} and
// "deepgen1.train_done" {node, lora_path}.  An inline SVG inside a DOM widget, so it renders in the
// classic canvas and in Nodes 2.0.  History, EMA and geometry live in ./lib (unit-tested); the widget, its
// layout and the axes are ./lib/chart_dom.js, shared with the reward chart of DeepGenTrainRL.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { el, mountChart, paint, svg } from "./lib/chart_dom.js";
import { EVENTS, NODE_CLASSES, parseDoneEvent, parseLossEvent } from "./lib/events.js";
import { LossHistory, buildChart } from "./lib/loss_chart.js";
import { registerNodeChart } from "./lib/node_chart.js";

const WIDGET = "deepgen1_loss_chart";
const STATE = Symbol("deepgen1.lossChart");

function ensureChart(node) {
  if (node[STATE]) return node[STATE];
  const state = { history: new LossHistory(), smoothing: 0.9, logY: false };
  const parts = mountChart(node, WIDGET, () => render(state));
  const logLabel = el("label", "display:flex;gap:3px;align-items:center;cursor:pointer;");
  const logBox = el("input");
  logBox.type = "checkbox";
  logLabel.appendChild(logBox);
  logLabel.appendChild(el("span", "", "log scale"));
  const smLabel = el("label", "display:flex;gap:3px;align-items:center;");
  smLabel.appendChild(el("span", "", "smoothing"));
  const smInput = el("input", "width:80px;");
  smInput.type = "range";
  smInput.min = "0";
  smInput.max = "0.99";
  smInput.step = "0.01";
  smInput.value = "0.9";
  const smValue = el("span", "min-width:2.5em;", "0.90");
  smLabel.appendChild(smInput);
  smLabel.appendChild(smValue);
  parts.bar.appendChild(logLabel);
  parts.bar.appendChild(smLabel);
  parts.bar.appendChild(parts.legend);
  state.parts = parts;
  logBox.addEventListener("change", () => {
    state.logY = !!logBox.checked;
    parts.schedule();
  });
  smInput.addEventListener("input", () => {
    const v = Number(smInput.value);
    state.smoothing = Number.isFinite(v) ? v : 0;
    smValue.textContent = state.smoothing.toFixed(2);
    parts.schedule();
  });
  node[STATE] = state;
  return state;
}

function render(state) {
  const { width, height } = state.parts.size;
  const view = buildChart(state.history, { width, height, smoothing: state.smoothing, logY: state.logY });
  const items = [];
  for (const s of view.series) {
    if (s.rawPath) {
      items.push(svg("path", { d: s.rawPath, fill: "none", stroke: s.color, "stroke-width": 1, "stroke-opacity": s.smoothPath ? 0.3 : 0.9, "data-task": s.task, "data-kind": "raw" }));
    }
    if (s.smoothPath) {
      items.push(svg("path", { d: s.smoothPath, fill: "none", stroke: s.color, "stroke-width": 1.6, "data-task": s.task, "data-kind": "ema" }));
    }
  }
  const legend = view.series.map((s) => {
    const item = el("span", `color:${s.color};`, `■ ${s.task}`);
    item.title = `${s.task}: last loss ${s.last === null ? "nan" : s.last}`;
    return item;
  });
  paint(state.parts, view, items, legend);
}

registerNodeChart(app, api, {
  name: "DeepGen1.LossChart",
  nodeClass: NODE_CLASSES.TRAIN_LORA,
  ensureChart,
  hasChart: (node) => !!node[STATE],
  events: [
    { type: EVENTS.TRAIN_LOSS, parse: parseLossEvent, update: (state, evt) => state.history.add(evt) },
    { type: EVENTS.TRAIN_DONE, parse: parseDoneEvent, update: (state, evt) => state.history.finish(evt.loraPath), createChart: false },
  ],
});
