// DeepGen 1.0: live training-loss chart on the DeepGenTrainLoRA node.
// Fed by websocket events "deepgen1.train_loss" {node, step, total_steps, loss, task, lr} and
// "deepgen1.train_done" {node, lora_path}.  An inline SVG inside a DOM widget, so it renders in the
// classic canvas and in Nodes 2.0.  History, EMA and geometry live in ./lib (unit-tested).
// Layout: the root is a flex column that never widens its container (`contain: inline-size`; in
// Nodes 2.0 a long nowrap status line otherwise stretched the widget row far past the node), and
// the SVG's viewBox follows its laid-out size (ResizeObserver), so the chart fills the node's width.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { EVENTS, NODE_CLASSES, parseDoneEvent, parseLossEvent } from "./lib/events.js";
import { findNodeByExecutionId, isNodeOfClass } from "./lib/graph.js";
import { LossHistory, buildChart, fitChartSize } from "./lib/loss_chart.js";

const WIDGET = "deepgen1_loss_chart";
const STATE = Symbol("deepgen1.lossChart");
const SVG_NS = "http://www.w3.org/2000/svg";
const FALLBACK_SIZE = { width: 320, height: 140 }; // before the first layout, or without ResizeObserver

function el(tag, css, text) {
  const e = document.createElement(tag);
  if (css) e.style.cssText = css;
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs ?? {})) e.setAttribute(k, String(v));
  return e;
}

const raf = (fn) => (typeof globalThis.requestAnimationFrame === "function" ? globalThis.requestAnimationFrame(fn) : setTimeout(fn, 16));

function ensureChart(node) {
  if (node[STATE]) return node[STATE];
  // min-width:0 + contain:inline-size: the content never sets the width; height:100% fills the classic
  // canvas's DOM-widget box (in Nodes 2.0 the height is the content's).
  const root = el(
    "div",
    "display:flex;flex-direction:column;width:100%;height:100%;min-width:0;contain:inline-size;overflow:hidden;" +
      "box-sizing:border-box;font:11px/1.3 sans-serif;color:var(--input-text,#ddd);padding:2px 4px;",
  );
  const bar = el("div", "flex:none;display:flex;gap:10px;align-items:center;flex-wrap:wrap;margin-bottom:2px;");
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
  const legend = el("div", "display:flex;gap:8px;flex-wrap:wrap;");
  bar.appendChild(logLabel);
  bar.appendChild(smLabel);
  bar.appendChild(legend);
  // The SVG takes the height the bar and status leave (140px when the node is tall enough).
  const chart = svg("svg", { viewBox: `0 0 ${FALLBACK_SIZE.width} ${FALLBACK_SIZE.height}` });
  chart.style.cssText = "display:block;flex:1 1 140px;width:100%;min-width:0;min-height:60px;";
  const status = el(
    "div",
    "flex:none;min-width:0;opacity:0.85;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;",
    "waiting for training to start…",
  );
  root.appendChild(bar);
  root.appendChild(chart);
  root.appendChild(status);

  const state = {
    history: new LossHistory(),
    smoothing: 0.9,
    logY: false,
    root,
    chart,
    legend,
    status,
    pending: false,
    widget: null,
    size: { ...FALLBACK_SIZE },
  };
  logBox.addEventListener("change", () => {
    state.logY = !!logBox.checked;
    scheduleRender(state);
  });
  smInput.addEventListener("input", () => {
    const v = Number(smInput.value);
    state.smoothing = Number.isFinite(v) ? v : 0;
    smValue.textContent = state.smoothing.toFixed(2);
    scheduleRender(state);
  });
  if (typeof globalThis.ResizeObserver === "function") {
    // Redraw at the SVG's laid-out size (CSS px, unaffected by the canvas zoom's transform).
    new globalThis.ResizeObserver(([entry]) => {
      const next = fitChartSize(entry.contentRect.width, entry.contentRect.height, state.size);
      if (next.width === state.size.width && next.height === state.size.height) return;
      state.size = next;
      scheduleRender(state);
    }).observe(chart);
  }
  if (typeof node.addDOMWidget === "function") {
    state.widget = node.addDOMWidget(WIDGET, WIDGET, root, {
      serialize: false, // display only: keep it out of the API prompt
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => 200,
    });
    if (state.widget) state.widget.serialize = false; // ...and out of the workflow's widgets_values
  }
  node[STATE] = state;
  return state;
}

function render(state) {
  state.pending = false;
  const { width, height } = state.size;
  const view = buildChart(state.history, { width, height, smoothing: state.smoothing, logY: state.logY });
  state.chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const { plot } = view;
  const items = [svg("rect", { x: plot.x0, y: plot.y0, width: plot.x1 - plot.x0, height: plot.y1 - plot.y0, fill: "none", stroke: "currentColor", "stroke-opacity": 0.25 })];
  for (const t of view.yTicks) {
    items.push(svg("line", { x1: plot.x0, x2: plot.x1, y1: t.y, y2: t.y, stroke: "currentColor", "stroke-opacity": 0.1 }));
    const label = svg("text", { x: plot.x0 - 3, y: t.y + 3, "text-anchor": "end", "font-size": 9, fill: "currentColor" });
    label.textContent = t.label;
    items.push(label);
  }
  for (const t of view.xTicks) {
    const label = svg("text", { x: t.x, y: plot.y1 + 12, "text-anchor": "middle", "font-size": 9, fill: "currentColor" });
    label.textContent = t.label;
    items.push(label);
  }
  for (const s of view.series) {
    if (s.rawPath) {
      items.push(svg("path", { d: s.rawPath, fill: "none", stroke: s.color, "stroke-width": 1, "stroke-opacity": s.smoothPath ? 0.3 : 0.9, "data-task": s.task, "data-kind": "raw" }));
    }
    if (s.smoothPath) {
      items.push(svg("path", { d: s.smoothPath, fill: "none", stroke: s.color, "stroke-width": 1.6, "data-task": s.task, "data-kind": "ema" }));
    }
  }
  state.chart.replaceChildren(...items);
  state.legend.replaceChildren(
    ...view.series.map((s) => {
      const item = el("span", `color:${s.color};`, `■ ${s.task}`);
      item.title = `${s.task}: last loss ${s.last === null ? "nan" : s.last}`;
      return item;
    }),
  );
  state.status.textContent = view.status;
  state.status.title = view.status;
}

function scheduleRender(state) {
  if (state.pending) return;
  state.pending = true;
  raf(() => render(state));
}

function trainingNode(id) {
  const graph = app.rootGraph ?? app.graph;
  const node = findNodeByExecutionId(graph, id);
  return node && (isNodeOfClass(node, NODE_CLASSES.TRAIN_LORA) || node[STATE]) ? node : null;
}

function onLoss(event) {
  const evt = parseLossEvent(event);
  if (!evt) return;
  const node = trainingNode(evt.node);
  if (!node) return; // another workflow tab, or a node that was deleted
  const state = ensureChart(node);
  state.history.add(evt);
  scheduleRender(state);
}

function onDone(event) {
  const evt = parseDoneEvent(event);
  if (!evt) return;
  const node = trainingNode(evt.node);
  if (!node) return;
  const state = ensureChart(node);
  state.history.finish(evt.loraPath);
  scheduleRender(state);
}

app.registerExtension({
  name: "DeepGen1.LossChart",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_CLASSES.TRAIN_LORA) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      ensureChart(this);
      return r;
    };
  },
  setup() {
    // Custom websocket messages are only dispatched once a listener for that exact type exists.
    api.addEventListener(EVENTS.TRAIN_LOSS, onLoss);
    api.addEventListener(EVENTS.TRAIN_DONE, onDone);
  },
});
