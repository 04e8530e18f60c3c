// DeepGen 1.0 front end: the wiring every live chart shares.  A chart belongs to one node class: it is mounted
// when such a node is created, and websocket events for that node (by execution id, subgraphs included) update
// it.  The charts themselves (state, widgets, rendering) stay in their own files.

import { findNodeByExecutionId, isNodeOfClass } from "./graph.js";

/**
 * Register one chart extension.
 * - `ensureChart(node)` mounts the chart once and returns its state (kept on the node).
 * - `hasChart(node)` says whether the node already has one.
 * - `events` lists `{ type, parse, update, createChart }`: `parse(event)` gives the event's payload or null,
 *   `update(state, payload)` applies it.  With `createChart: false` the event only updates a chart that
 *   exists: "train_done" ends a run the chart has shown, it starts none.
 */
export function registerNodeChart(app, api, { name, nodeClass, ensureChart, hasChart, events }) {
  function chartNode(id) {
    const graph = app.rootGraph ?? app.graph;
    const node = findNodeByExecutionId(graph, id);
    return node && (isNodeOfClass(node, nodeClass) || hasChart(node)) ? node : null;
  }

  function listener({ parse, update, createChart = true }) {
    return (event) => {
      const payload = parse(event);
      if (!payload) return;
      const node = chartNode(payload.node);
      if (!node) return; // another workflow tab, or a node that was deleted
      if (!createChart && !hasChart(node)) return;
      const state = ensureChart(node);
      update(state, payload);
      state.parts.schedule();
    };
  }

  app.registerExtension({
    name,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== nodeClass) return;
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onNodeCreated?.apply(this, arguments);
        ensureChart(this);
        return r;
      };
    },
    setup() {
      // Custom websocket messages are only dispatched once a listener for that exact type exists.
      for (const spec of events) api.addEventListener(spec.type, listener(spec));
    },
  });
}
