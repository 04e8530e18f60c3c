// DeepGen 1.0 front end: names and payload parsing shared by the extensions.
// Pure module: no DOM, no ComfyUI imports (tested with `node --test web/tests/`).
// ComfyUI imports every .js under web/, so this file must stay free of side effects.

/** Every custom websocket event of this pack starts with this (an unrelated "deepgen-api" pack exists). */
export const EVENT_PREFIX = "deepgen1.";

export const EVENTS = Object.freeze({
  TRAIN_LOSS: "deepgen1.train_loss",
  TRAIN_DONE: "deepgen1.train_done",
  TRAIN_REWARDS: "deepgen1.train_rewards",
});

/** comfyClass / node id of the nodes the extensions decorate. */
export const NODE_CLASSES = Object.freeze({
  REWARD_SCORE: "RewardScore",
  TRAIN_LORA: "DeepGenTrainLoRA",
  TRAIN_RL: "DeepGenTrainRL",
});

/** Every DeepGen node's category starts with this (nodes/types.py CATEGORY), e.g. "DeepGen 1.0/training". */
export const NODE_CATEGORY = "DeepGen 1.0";

/** Keys of node `ui` dicts (the `message` given to `onExecuted`). */
export const UI_KEYS = Object.freeze({
  REWARDS: "deepgen1_rewards",
});

/** A finite number, or null (NaN/inf arrive as null from the Python side; strings are parsed). */
export function finiteOrNull(value) {
  if (value === null || value === undefined || typeof value === "boolean") return null;
  const n = typeof value === "number" ? value : typeof value === "string" && value.trim() !== "" ? Number(value) : NaN;
  return Number.isFinite(n) ? n : null;
}

/** Node ids travel as strings ("12", or "5:12" inside a subgraph); numbers are accepted. */
export function nodeIdOf(value) {
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  if (typeof value === "string" && value.trim() !== "") return value.trim();
  return null;
}

function detailOf(eventOrDetail) {
  // api.addEventListener hands over a CustomEvent; accept its detail directly too.
  if (eventOrDetail && typeof eventOrDetail === "object" && "detail" in eventOrDetail && !("node" in eventOrDetail)) {
    return eventOrDetail.detail;
  }
  return eventOrDetail;
}

/**
 * Parse a `deepgen1.train_loss` payload
 * `{node, step, total_steps, loss, task, lr}` into
 * `{node, step, totalSteps, loss, task, lr}`, or null when `node`/`step` are unusable.
 * `loss`/`lr`/`totalSteps` may be null (a NaN loss is sent as null).
 */
export function parseLossEvent(eventOrDetail) {
  const d = detailOf(eventOrDetail);
  if (!d || typeof d !== "object") return null;
  const node = nodeIdOf(d.node);
  const step = finiteOrNull(d.step);
  if (node === null || step === null || step < 0) return null;
  const total = finiteOrNull(d.total_steps);
  const task = typeof d.task === "string" && d.task.trim() !== "" ? d.task.trim() : "train";
  return {
    node,
    step: Math.floor(step),
    totalSteps: total !== null && total > 0 ? Math.floor(total) : null,
    loss: finiteOrNull(d.loss),
    task,
    lr: finiteOrNull(d.lr),
  };
}

function meanStd(value) {
  const v = value && typeof value === "object" ? value : {};
  return { mean: finiteOrNull(v.mean), std: finiteOrNull(v.std) };
}

/**
 * Parse a `deepgen1.train_rewards` payload (DeepGenTrainRL, one per trainer step)
 * `{node, step, total_steps, rewards: {name: {mean, std}}, total: {mean, std}, kl, lr}` into
 * `{node, step, totalSteps, rewards: {name: {mean, std}}, total: {mean, std}, kl, lr}`, or null when
 * `node`/`step` are unusable.  Missing or NaN numbers (a reward without a value this step) are null.
 */
export function parseRewardsEvent(eventOrDetail) {
  const d = detailOf(eventOrDetail);
  if (!d || typeof d !== "object") return null;
  const node = nodeIdOf(d.node);
  const step = finiteOrNull(d.step);
  if (node === null || step === null || step < 0) return null;
  const total = finiteOrNull(d.total_steps);
  const rewards = {};
  if (d.rewards && typeof d.rewards === "object" && !Array.isArray(d.rewards)) {
    for (const [name, value] of Object.entries(d.rewards)) rewards[name] = meanStd(value);
  }
  return {
    node,
    step: Math.floor(step),
    totalSteps: total !== null && total > 0 ? Math.floor(total) : null,
    rewards,
    total: meanStd(d.total),
    kl: finiteOrNull(d.kl),
    lr: finiteOrNull(d.lr),
  };
}

/** Parse a `deepgen1.train_done` payload `{node, lora_path}` into `{node, loraPath}`, or null. */
export function parseDoneEvent(eventOrDetail) {
  const d = detailOf(eventOrDetail);
  if (!d || typeof d !== "object") return null;
  const node = nodeIdOf(d.node);
  if (node === null) return null;
  const loraPath = typeof d.lora_path === "string" && d.lora_path !== "" ? d.lora_path : null;
  return { node, loraPath };
}

/**
 * Rows of a RewardScore result from the `onExecuted` message (`message.deepgen1_rewards`):
 * a list of `{index, total, rewards: {name: number|null}, best}`.  Returns null when the message
 * has no such key (another output), else a list sorted by index.  Lists nested one level deep (a
 * node that ran on list inputs gets its ui lists concatenated per call) are flattened.
 */
export function parseRewardsMessage(message) {
  if (!message || typeof message !== "object" || !(UI_KEYS.REWARDS in message)) return null;
  let raw = message[UI_KEYS.REWARDS];
  if (!Array.isArray(raw)) raw = raw && typeof raw === "object" ? [raw] : [];
  const flat = raw.flatMap((r) => (Array.isArray(r) ? r : [r]));
  const rows = [];
  flat.forEach((r, position) => {
    if (!r || typeof r !== "object") return;
    const index = finiteOrNull(r.index);
    const rewards = {};
    if (r.rewards && typeof r.rewards === "object" && !Array.isArray(r.rewards)) {
      for (const [name, value] of Object.entries(r.rewards)) rewards[name] = finiteOrNull(value);
    }
    rows.push({
      index: index === null ? position : Math.floor(index),
      total: finiteOrNull(r.total),
      rewards,
      best: r.best === true,
    });
  });
  rows.sort((a, b) => a.index - b.index);
  return rows;
}
