// DeepGen 1.0: live reward chart on the DeepGenTrainRL node: one line per reward (its mean over the step's
// images) with a band for the std, the weighted total (dashed) and the KL to the start model (grey, right axis).
// Fed by websocket events "deepgen1.train_rewards" {node, step, total_steps, rewards: {name: {mean, std}},
// total: {mean, std}, kl, lr} and "deepgen1.train_done" {node, lora_path}.  The widget, layout and axes are
// ./lib/chart_dom.js (shared with the loss chart); history and geometry ./lib/reward_chart.js (unit-tested).

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { el, mountChart, paint, svg } from "./lib/chart_dom.js";
import { EVENTS, NODE_CLASSES, parseDoneEvent, parseRewardsEvent } from "./lib/events.js";
import { registerNodeChart } from "./lib/node_chart.js";
import { RewardHistory, buildRewardChart } from "./lib/reward_chart.js";

const WIDGET = "deepgen1_reward_chart";
const STATE = Symbol("deepgen1.rewardChart");

function ensureChart(node) {
  if (node[STATE]) return node[STATE];
  const state = { history: new RewardHistory(), showStd: true };
  const parts = mountChart(node, WIDGET, () => render(state));
  const stdLabel = el("label", "display:flex;gap:3px;align-items:center;cursor:pointer;");
  const stdBox = el("input");
  stdBox.type = "checkbox";
  stdBox.checked = true;
  stdLabel.appendChild(stdBox);
  stdLabel.appendChild(el("span", "", "std band"));
  parts.bar.appendChild(stdLabel);
  parts.bar.appendChild(parts.legend);
  stdBox.addEventListener("change", () => {
    state.showStd = !!stdBox.checked;
    parts.schedule();
  });
  state.parts = parts;
  node[STATE] = state;
  return state;
}

function render(state) {
  const { width, height } = state.parts.size;
  const view = buildRewardChart(state.history, { width, height, showStd: state.showStd });
  const items = [];
  for (const s of view.series) {
    if (s.bandPath) items.push(svg("path", { d: s.bandPath, fill: s.color, "fill-opacity": 0.18, stroke: "none", "data-reward": s.name, "data-kind": "band" }));
  }
  for (const s of view.series) {
    const attrs = { d: s.path, fill: "none", stroke: s.color, "stroke-width": 1.6, "data-reward": s.name, "data-kind": "mean" };
    if (s.dashed) attrs["stroke-dasharray"] = "4 3";
    if (s.path) items.push(svg("path", attrs));
  }
  if (view.kl?.path) {
    items.push(svg("path", { d: view.kl.path, fill: "none", stroke: view.kl.color, "stroke-width": 1, "stroke-dasharray": "2 2", "data-reward": "kl", "data-kind": "kl" }));
  }
  const legend = view.series.map((s) => {
    const item = el("span", `color:${s.color};`, `■ ${s.name}`);
    item.title = `${s.name}: last mean ${s.last === null ? "nan" : s.last}`;
    return item;
  });
  if (view.kl) {
    const item = el("span", `color:${view.kl.color};`, "┄ kl (right axis)");
    item.title = `KL to the start model: last ${view.kl.last === null ? "nan" : view.kl.last}`;
    legend.push(item);
  }
  paint(state.parts, view, items, legend);
}

registerNodeChart(app, api, {
  name: "DeepGen1.RewardChart",
  nodeClass: NODE_CLASSES.TRAIN_RL,
  ensureChart,
  hasChart: (node) => !!node[STATE],
  events: [
    { type: EVENTS.TRAIN_REWARDS, parse: parseRewardsEvent, update: (state, evt) => state.history.add(evt) },
    { type: EVENTS.TRAIN_DONE, parse: parseDoneEvent, update: (state, evt) => state.history.finish(evt.loraPath), createChart: false },
  ],
});
