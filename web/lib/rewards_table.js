// DeepGen 1.0 front end: the RewardScore breakdown table as plain data (no DOM).

import { formatNumber } from "./loss_chart.js";

/** Reward columns in display order; any other reward names follow alphabetically. */
export const KNOWN_REWARDS = Object.freeze(["clip", "ocr", "preference"]);

const LABELS = { clip: "CLIP", ocr: "OCR", preference: "pref." };
const TITLES = {
  clip: "CLIP image–text similarity",
  ocr: "OCR text accuracy (— when the prompt has no text to render)",
  preference: "Preference (human-aesthetic) score",
  total: "Weighted total used to pick the best image",
};

function fmt(v) {
  return v === null ? "—" : formatNumber(v, 3);
}

/**
 * Table model for rows from `parseRewardsMessage`:
 * `{columns: [{key, label, title}], rows: [{index, best, cells: [string]}], summary, empty}`.
 * The first column is the batch index (0-based, as ImageFromBatch counts), then total, then
 * one column per reward.  `summary` names the best image ("best: #2 · total 0.812").
 */
export function rewardsTable(rows) {
  const list = Array.isArray(rows) ? rows : [];
  const names = new Set();
  for (const r of list) for (const k of Object.keys(r.rewards ?? {})) names.add(k);
  const rewardKeys = [
    ...KNOWN_REWARDS.filter((k) => names.has(k)),
    ...[...names].filter((k) => !KNOWN_REWARDS.includes(k)).sort(),
  ];
  const columns = [
    { key: "index", label: "#", title: "Batch index (0-based)" },
    { key: "total", label: "total", title: TITLES.total },
    ...rewardKeys.map((k) => ({ key: k, label: LABELS[k] ?? k, title: TITLES[k] ?? k })),
  ];
  const body = list.map((r) => ({
    index: r.index,
    best: r.best === true,
    cells: [String(r.index), fmt(r.total ?? null), ...rewardKeys.map((k) => fmt(r.rewards?.[k] ?? null))],
  }));
  const best = list.filter((r) => r.best === true);
  let summary;
  if (list.length === 0) summary = "no images scored";
  else if (best.length === 0) summary = `${list.length} image${list.length === 1 ? "" : "s"} scored`;
  else summary = best.map((r) => `best: #${r.index} · total ${fmt(r.total ?? null)}`).join("; ");
  return { columns, rows: body, summary, empty: list.length === 0 };
}
