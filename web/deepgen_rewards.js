// DeepGen 1.0: per-image reward breakdown under the RewardScore node.
// The node returns {"ui": {"deepgen1_rewards": [{index, total, rewards: {clip, ocr, preference}, best}]}};
// ComfyUI passes that ui dict to onExecuted.  Rendered as a DOM widget (works in the classic canvas
// and in Nodes 2.0); all parsing and formatting lives in ./lib (unit-tested with node --test).

import { app } from "../../scripts/app.js";
import { NODE_CLASSES, parseRewardsMessage } from "./lib/events.js";
import { rewardsTable } from "./lib/rewards_table.js";

const WIDGET = "deepgen1_rewards";
const STATE = Symbol("deepgen1.rewards");
const ROW_PX = 20;

function el(tag, css, text) {
  const e = document.createElement(tag);
  if (css) e.style.cssText = css;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fitNode(node) {
  try {
    const size = node.computeSize?.();
    if (size && node.size && node.setSize) {
      node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
    }
    node.setDirtyCanvas?.(true, true);
  } catch (err) {
    console.warn("[DeepGen1] could not resize node", err);
  }
}

function ensureTable(node) {
  if (node[STATE]) return node[STATE];
  const root = el(
    "div",
    "width:100%;box-sizing:border-box;overflow:auto;font:12px/1.4 sans-serif;" +
      "color:var(--input-text,#ddd);padding:2px 4px;",
  );
  const summary = el("div", "opacity:0.8;margin-bottom:2px;", "run the workflow to score images");
  const table = el("table", "width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums;");
  root.appendChild(summary);
  root.appendChild(table);
  const state = { root, summary, table, rows: 0, widget: null };
  if (typeof node.addDOMWidget === "function") {
    state.widget = node.addDOMWidget(WIDGET, WIDGET, root, {
      serialize: false, // display only: keep it out of the API prompt
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => 24 + (state.rows > 0 ? (state.rows + 1) * ROW_PX : 0),
    });
    if (state.widget) state.widget.serialize = false; // ...and out of the workflow's widgets_values
  }
  node[STATE] = state;
  return state;
}

function render(node, rows) {
  const state = ensureTable(node);
  const model = rewardsTable(rows);
  state.summary.textContent = model.summary;
  const head = el("tr");
  for (const c of model.columns) {
    const th = el("th", "text-align:right;padding:1px 6px;border-bottom:1px solid var(--border-color,#555);font-weight:600;", c.label);
    th.title = c.title;
    head.appendChild(th);
  }
  const trs = [head];
  for (const r of model.rows) {
    const tr = el("tr", r.best ? "background:rgba(120,200,120,0.18);font-weight:600;" : "");
    if (r.best) tr.title = "best image of the batch";
    r.cells.forEach((text, i) => {
      tr.appendChild(el("td", "text-align:right;padding:1px 6px;", i === 0 && r.best ? `★ ${text}` : text));
    });
    trs.push(tr);
  }
  state.table.replaceChildren(...(model.empty ? [] : trs));
  state.rows = model.rows.length;
  fitNode(node);
}

app.registerExtension({
  name: "DeepGen1.RewardsTable",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_CLASSES.REWARD_SCORE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      ensureTable(this);
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const rows = parseRewardsMessage(message);
      if (rows !== null) render(this, rows);
      return r;
    };
  },
});
