import { test } from "node:test";
import assert from "node:assert/strict";

import { findNodeByExecutionId, isNodeOfClass } from "../lib/graph.js";

function graphWith(nodes, style = "getNodeById") {
  const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
  if (style === "getNodeById") return { getNodeById: (id) => byId[id] ?? null };
  if (style === "map") return { _nodes_by_id: new Map(nodes.map((n) => [n.id, n])) };
  return { nodes };
}

test("top-level ids, as strings or numbers, in every graph shape", () => {
  for (const style of ["getNodeById", "map", "list"]) {
    const a = { id: 3, comfyClass: "DeepGenTrainLoRA" };
    const g = graphWith([a, { id: 4 }], style);
    assert.equal(findNodeByExecutionId(g, "3"), a, style);
    assert.equal(findNodeByExecutionId(g, 3), a, style);
    assert.equal(findNodeByExecutionId(g, "99"), null, style);
  }
});

test("subgraph execution ids walk node.subgraph", () => {
  const inner = { id: 5, type: "DeepGenTrainLoRA" };
  const deeper = { id: 2 };
  const mid = { id: 7, subgraph: graphWith([deeper]) };
  const sub = graphWith([inner, mid]);
  const root = graphWith([{ id: 12, subgraph: sub }, { id: 5 }]);
  assert.equal(findNodeByExecutionId(root, "12:5"), inner);
  assert.equal(findNodeByExecutionId(root, "12:7:2"), deeper);
  assert.equal(findNodeByExecutionId(root, "12:9"), null);
  assert.equal(findNodeByExecutionId(root, "5:1"), null, "node 5 has no subgraph");
  assert.equal(findNodeByExecutionId(root, ""), null);
  assert.equal(findNodeByExecutionId(root, null), null);
  assert.equal(findNodeByExecutionId(null, "1"), null);
});

test("isNodeOfClass checks comfyClass or type", () => {
  assert.ok(isNodeOfClass({ comfyClass: "RewardScore" }, "RewardScore"));
  assert.ok(isNodeOfClass({ type: "RewardScore" }, "RewardScore"));
  assert.ok(!isNodeOfClass({ type: "Other" }, "RewardScore"));
  assert.ok(!isNodeOfClass(null, "RewardScore"));
});
