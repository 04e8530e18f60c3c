import { test } from "node:test";
import assert from "node:assert/strict";

import { parseRewardsMessage } from "../lib/events.js";
import { rewardsTable } from "../lib/rewards_table.js";

test("columns in display order, cells formatted, best marked", () => {
  const rows = parseRewardsMessage({
    deepgen1_rewards: [
      { index: 0, total: 0.51234, rewards: { preference: 5.5, clip: 0.3125, ocr: null, aesthetic: 2 }, best: false },
      { index: 1, total: 0.8, rewards: { clip: 0.33, ocr: 0.9, preference: 6.25 }, best: true },
    ],
  });
  const t = rewardsTable(rows);
  assert.deepEqual(
    t.columns.map((c) => c.key),
    ["index", "total", "clip", "ocr", "preference", "aesthetic"],
  );
  assert.deepEqual(
    t.columns.map((c) => c.label),
    ["#", "total", "CLIP", "OCR", "pref.", "aesthetic"],
  );
  assert.ok(t.columns.every((c) => typeof c.title === "string" && c.title.length > 0));
  assert.deepEqual(t.rows[0], { index: 0, best: false, cells: ["0", "0.512", "0.313", "—", "5.5", "2"] });
  assert.deepEqual(t.rows[1], { index: 1, best: true, cells: ["1", "0.8", "0.33", "0.9", "6.25", "—"] });
  assert.equal(t.summary, "best: #1 · total 0.8");
  assert.equal(t.empty, false);
});

test("empty and no-best tables", () => {
  assert.deepEqual(rewardsTable([]), {
    columns: [
      { key: "index", label: "#", title: "Batch index (0-based)" },
      { key: "total", label: "total", title: "Weighted total used to pick the best image" },
    ],
    rows: [],
    summary: "no images scored",
    empty: true,
  });
  assert.equal(rewardsTable(null).empty, true);
  const t = rewardsTable([{ index: 0, total: null, rewards: {}, best: false }]);
  assert.equal(t.summary, "1 image scored");
  assert.deepEqual(t.rows[0].cells, ["0", "—"]);
});
