// DeepGen 1.0 front end: finding nodes in a (sub)graph.  Pure: works on any object shaped like a
// LiteGraph graph (`getNodeById`, `_nodes_by_id` or `nodes`), so it is testable without ComfyUI.

function lookup(graph, id) {
  if (!graph) return null;
  if (typeof graph.getNodeById === "function") {
    const n = graph.getNodeById(id) ?? (/^\d+$/.test(id) ? graph.getNodeById(Number(id)) : null);
    if (n) return n;
  }
  const byId = graph._nodes_by_id;
  if (byId) {
    const n = typeof byId.get === "function" ? byId.get(id) ?? byId.get(Number(id)) : byId[id];
    if (n) return n;
  }
  const list = graph.nodes ?? graph._nodes;
  if (Array.isArray(list)) return list.find((n) => n && String(n.id) === id) ?? null;
  return null;
}

/**
 * The node an execution id names.  The server reports nodes inside subgraphs with
 * colon-separated ids ("12:5" = node 5 in the subgraph of node 12); top-level ids are plain.
 * Returns null when any step is missing.
 */
export function findNodeByExecutionId(rootGraph, executionId) {
  if (executionId === null || executionId === undefined) return null;
  const parts = String(executionId).split(":").filter((p) => p !== "");
  if (parts.length === 0) return null;
  let graph = rootGraph;
  let node = null;
  for (let i = 0; i < parts.length; i++) {
    node = lookup(graph, parts[i]);
    if (!node) return null;
    if (i < parts.length - 1) graph = node.subgraph;
  }
  return node;
}

/** Whether `node` is an instance of ComfyUI node class `comfyClass`. */
export function isNodeOfClass(node, comfyClass) {
  return !!node && (node.comfyClass === comfyClass || node.type === comfyClass);
}
