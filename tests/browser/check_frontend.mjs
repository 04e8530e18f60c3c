// Dev check (not run by CI): load the LoRA workflow (or, with --target rl, the RL workflow) in a real ComfyUI
// front end, in the classic LiteGraph canvas and in Nodes 2.0, and check that
//   - the loss chart's box lies inside the DeepGenTrainLoRA node's box (--target rl: the reward chart inside
//     DeepGenTrainRL's, with a line per reward, std bands, the total and KL drawn),
//   - its status line is cut with an ellipsis (no overflow) when the text is long,
//   - the learning-rate widget shows 0.0001 (its default 1e-4; the classic canvas pads it to the
//     step's 5 decimals, "0.00010", so the shown text is compared as a number, never "0"),
//   - the page logs no console errors that come from this extension. A bare ComfyUI 0.3.75 with no
//     custom nodes logs some of its own when offline (404s for user.css and userdata, a TypeError in
//     its settings store, the blocked registry look-up at api.comfy.org); those are listed, not failed.
// Usage (see tests/browser/README.md):
//   cd tests/browser && npm install && node check_frontend.mjs --out /tmp/shots [--repo ../..]
// Options: --repo (the extension to link into custom_nodes/, default this checkout), --comfy (ComfyUI
// source), --python (its venv's python), --chromium, --port, --url (use a running server instead).
// Exit code 0 when every check passes, 1 otherwise; results go to stdout and <out>/results.json.

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const HERE = dirname(fileURLToPath(import.meta.url));
const { values: opts } = parseArgs({
  options: {
    out: { type: "string" },
    repo: { type: "string", default: resolve(HERE, "../..") },
    comfy: { type: "string", default: "/tmp/comfy/comfyui" },
    python: { type: "string", default: "/tmp/comfy-venv/bin/python" },
    chromium: { type: "string", default: "/usr/bin/chromium" },
    port: { type: "string", default: "8393" },
    url: { type: "string" },
    target: { type: "string", default: "lora" },
  },
});
if (!opts.out) {
  console.error("usage: node check_frontend.mjs --out SCREENSHOT_DIR [--repo PATH] [--url http://127.0.0.1:N]");
  process.exit(2);
}
mkdirSync(opts.out, { recursive: true });

// What each target loads and feeds: the node, its chart widget, the workflow, the events and the learning rate
// the workflow's widget must show (classic pads it to the step's decimals).
const TARGETS = {
  lora: { node: "DeepGenTrainLoRA", chart: "deepgen1_loss_chart", workflow: "workflows/deepgen_lora_finetune.json", lr: /^0\.00010*$/, feed: "loss" },
  rl: { node: "DeepGenTrainRL", chart: "deepgen1_reward_chart", workflow: "workflows/deepgen_rl_finetune.json", lr: /^0\.0030*$/, feed: "rewards" },
};
const TARGET = TARGETS[opts.target];
if (!TARGET) {
  console.error(`--target must be one of ${Object.keys(TARGETS).join(", ")}`);
  process.exit(2);
}
const NODE_CLASS = TARGET.node;
const CHART_WIDGET = TARGET.chart;
const LR_WIDGET = "learning_rate";
const LONG_PATH = "/very/long/output/folder/".repeat(8) + "deepgen_lora_subject_rank16_steps2000.safetensors";
const VIEWPORT = { width: 1600, height: 1400 }; // tall enough for the whole DeepGenTrainRL node in Nodes 2.0
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitForServer(url, server, seconds = 180) {
  for (let i = 0; i < seconds; i++) {
    if (server && server.exitCode !== null) throw new Error(`ComfyUI exited with code ${server.exitCode}`);
    try {
      if ((await fetch(`${url}/object_info`)).ok) return;
    } catch {
      // not listening yet
    }
    await sleep(1000);
  }
  throw new Error(`ComfyUI did not answer ${url}/object_info within ${seconds} s`);
}

/** Start ComfyUI with a temp base dir whose custom_nodes/ links to the extension under test. */
async function startComfy() {
  const base = mkdtempSync(join(tmpdir(), "deepgen-browser-"));
  mkdirSync(join(base, "custom_nodes"));
  symlinkSync(resolve(opts.repo), join(base, "custom_nodes", "ComfyUI-DeepGen"));
  const args = ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", opts.port, "--base-directory", base];
  args.push("--disable-auto-launch", "--disable-api-nodes");
  const log = join(opts.out, "comfyui.log");
  const server = spawn(opts.python, args, { cwd: opts.comfy, stdio: ["ignore", "pipe", "pipe"] });
  const chunks = [];
  server.stdout.on("data", (d) => chunks.push(d));
  server.stderr.on("data", (d) => chunks.push(d));
  const url = `http://127.0.0.1:${opts.port}`;
  const stop = () => {
    if (server.exitCode === null) server.kill("SIGTERM");
    writeFileSync(log, Buffer.concat(chunks));
    rmSync(base, { recursive: true, force: true });
  };
  try {
    await waitForServer(url, server);
  } catch (e) {
    stop();
    throw e;
  }
  return { url, stop };
}

async function setSettings(url, settings) {
  const r = await fetch(`${url}/api/settings`, { method: "POST", body: JSON.stringify(settings) });
  if (!r.ok) throw new Error(`POST /api/settings: HTTP ${r.status}`);
}

/** Everything measured in the page for one mode; runs in the browser. */
function measureInPage({ nodeClass, chartWidget, lrWidget, longPath, vue }) {
  const app = window.app;
  const node = app.graph.nodes.find((n) => n.type === nodeClass);
  if (!node) return { error: `no ${nodeClass} node in the graph` };
  const widget = node.widgets.find((w) => w.name === chartWidget);
  const root = widget?.element;
  if (!root) return { error: `no ${chartWidget} DOM widget on the node` };
  const rectOf = (r) => ({ left: r.left, top: r.top, right: r.right, bottom: r.bottom });
  let nodeBox;
  if (vue) {
    const el = document.querySelector(`[data-node-id="${node.id}"]`);
    if (!el) return { error: "no Nodes 2.0 element for the node" };
    nodeBox = rectOf(el.getBoundingClientRect());
  } else {
    // Classic: the node's body in canvas space, mapped to the page (title bar excluded).
    const ds = app.canvas.ds;
    const c = app.canvas.canvas.getBoundingClientRect();
    const toPage = (x, y) => [(x + ds.offset[0]) * ds.scale + c.left, (y + ds.offset[1]) * ds.scale + c.top];
    const [left, top] = toPage(node.pos[0], node.pos[1]);
    const [right, bottom] = toPage(node.pos[0] + node.size[0], node.pos[1] + node.size[1]);
    nodeBox = { left, top, right, bottom };
  }
  const chartBox = rectOf(root.getBoundingClientRect());
  const status = [...root.querySelectorAll("div")].at(-1);
  const statusBox = rectOf(status.getBoundingClientRect());
  const statusStyle = getComputedStyle(status);
  const lr = node.widgets.find((w) => w.name === lrWidget);
  let lrShown = null;
  if (vue) {
    const el = document.querySelector(`[data-node-id="${node.id}"]`);
    const input = el?.querySelector(`input[aria-label="${lrWidget}"]`) ?? el?.querySelector(`[aria-label="${lrWidget}"] input`);
    lrShown = input ? input.value : null;
  } else {
    lrShown = lr?._displayValue ?? null;
  }
  return {
    nodeId: node.id,
    nodeBox,
    chartBox,
    statusBox,
    statusText: status.textContent,
    statusOverflowPx: status.scrollWidth - status.clientWidth,
    statusStyle: { overflow: statusStyle.overflow, textOverflow: statusStyle.textOverflow, whiteSpace: statusStyle.whiteSpace },
    lrValue: lr?.value ?? null,
    lrOptions: lr ? { ...lr.options } : null,
    lrShown,
    longPath,
  };
}

/** Sample training events, so the chart has lines and a long status ("LoRA saved to <long path>"). */
function feedEvents({ nodeId, longPath, feed }) {
  const api = window.comfyAPI.api.api;
  for (let step = 1; step <= 40; step++) {
    if (feed === "rewards") {
      const rise = 1 - Math.exp(-step / 12);
      const rewards = {
        brightness: { mean: 0.35 + 0.2 * rise + 0.01 * Math.sin(step), std: 0.04 },
        clip: { mean: 0.24 + 0.03 * rise, std: 0.015 },
        ocr: { mean: 0.3 + 0.4 * rise, std: 0.12 },
      };
      const total = { mean: 0.3 * rewards.brightness.mean + 0.3 * rewards.clip.mean + 0.4 * rewards.ocr.mean, std: 0.05 };
      api.dispatchCustomEvent("deepgen1.train_rewards", { node: String(nodeId), step, total_steps: 40, rewards, total, kl: step * step * 2e-7, lr: 3e-3 });
    } else {
      const loss = 0.5 * Math.exp(-step / 15) + 0.05 * Math.sin(step);
      api.dispatchCustomEvent("deepgen1.train_loss", { node: String(nodeId), step, total_steps: 40, loss: Math.abs(loss), task: step % 3 ? "text2image" : "image2image", lr: 1e-4 });
    }
  }
  api.dispatchCustomEvent("deepgen1.train_done", { node: String(nodeId), lora_path: longPath });
}

/** The reward chart's drawn paths by data-kind (band / mean / kl), to check every reward is drawn. */
function drawnPaths({ nodeClass, chartWidget }) {
  const node = window.app.graph.nodes.find((n) => n.type === nodeClass);
  const root = node.widgets.find((w) => w.name === chartWidget).element;
  return [...root.querySelectorAll("path")].map((p) => `${p.getAttribute("data-reward") ?? p.getAttribute("data-task")}/${p.getAttribute("data-kind")}`);
}

/** An error from this extension names its files or its events; the registry look-up is the front end's. */
function fromExtension(text) {
  if (/api\.comfy\.org\/nodes\?node_id=/.test(text)) return false;
  return /deepgen/i.test(text);
}

function inside(inner, outer, tol = 1) {
  return inner.left >= outer.left - tol && inner.right <= outer.right + tol && inner.top >= outer.top - tol && inner.bottom <= outer.bottom + tol;
}

async function runMode(context, url, mode, workflow) {
  const vue = mode === "nodes2";
  await setSettings(url, { "Comfy.VueNodes.Enabled": vue, "Comfy.TutorialCompleted": true, "Comfy.VueNodes.AutoScaleLayout": false });
  const page = await context.newPage();
  await page.setViewportSize(VIEWPORT);
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(`${m.text()} @ ${m.location().url}`));
  page.on("pageerror", (e) => errors.push(`${e.stack ?? e}`));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app?.graph && window.app?.canvas, null, { timeout: 120000 });
  await page.evaluate(async (wf) => {
    await window.app.loadGraphData(wf, true, true, "deepgen_check");
  }, workflow);
  // Centre the training node at scale 1 so both modes show it the same way.
  await page.evaluate((cls) => {
    const app = window.app;
    const node = app.graph.nodes.find((n) => n.type === cls);
    const c = app.canvas.canvas.getBoundingClientRect();
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset[0] = c.width / 2 - node.pos[0] - node.size[0] / 2;
    app.canvas.ds.offset[1] = 120 - node.pos[1]; // below the menu bar and the title

    app.canvas.setDirty(true, true);
  }, NODE_CLASS);
  await sleep(2500);
  const first = await page.evaluate(measureInPage, { nodeClass: NODE_CLASS, chartWidget: CHART_WIDGET, lrWidget: LR_WIDGET, longPath: LONG_PATH, vue });
  if (first.error) throw new Error(`${mode}: ${first.error}`);
  await page.evaluate(feedEvents, { nodeId: first.nodeId, longPath: LONG_PATH, feed: TARGET.feed });
  await sleep(1500);
  const m = await page.evaluate(measureInPage, { nodeClass: NODE_CLASS, chartWidget: CHART_WIDGET, lrWidget: LR_WIDGET, longPath: LONG_PATH, vue });
  const paths = await page.evaluate(drawnPaths, { nodeClass: NODE_CLASS, chartWidget: CHART_WIDGET });
  await page.screenshot({ path: join(opts.out, `${opts.target}-${mode}-page.png`) });
  const pad = 40;
  const clip = {
    x: Math.max(0, m.nodeBox.left - pad),
    y: Math.max(0, m.nodeBox.top - pad),
    width: m.nodeBox.right - m.nodeBox.left + 2 * pad + 200,
    height: Math.min(VIEWPORT.height - Math.max(0, m.nodeBox.top - pad), m.nodeBox.bottom - m.nodeBox.top + 2 * pad),
  };
  await page.screenshot({ path: join(opts.out, `${opts.target}-${mode}-node.png`), clip });
  await page.close();
  const ours = errors.filter(fromExtension);
  const checks = {
    chartInsideNode: inside(m.chartBox, m.nodeBox),
    statusInsideNode: inside(m.statusBox, m.nodeBox),
    statusEllipsis: m.statusStyle.textOverflow === "ellipsis" && m.statusStyle.overflow === "hidden" && m.statusStyle.whiteSpace === "nowrap",
    statusIsCut: m.statusOverflowPx > 0, // the long path really overflows, so the ellipsis shows
    lrShownInFull: m.lrShown !== null && TARGET.lr.test(m.lrShown.trim()),
    noConsoleErrorsFromExtension: ours.length === 0,
  };
  if (TARGET.feed === "rewards") {
    const want = ["brightness/band", "clip/band", "ocr/band", "brightness/mean", "clip/mean", "ocr/mean", "total/mean", "kl/kl"];
    checks.everyRewardDrawn = JSON.stringify(paths) === JSON.stringify(want);
  }
  return { mode, checks, paths, measured: m, consoleErrors: ours, frontEndErrors: errors.filter((e) => !ours.includes(e)) };
}

async function main() {
  const workflow = JSON.parse(readFileSync(resolve(opts.repo, TARGET.workflow), "utf8"));
  const server = opts.url ? { url: opts.url, stop: () => {} } : await startComfy();
  const profile = mkdtempSync(join(tmpdir(), "deepgen-chromium-"));
  const flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"];
  flags.push("--disable-component-update", "--disable-sync");
  let context;
  const results = [];
  try {
    // A persistent context takes the fresh --user-data-dir; playwright adds --headless itself.
    context = await chromium.launchPersistentContext(profile, { executablePath: opts.chromium, headless: true, args: flags });
    for (const mode of ["classic", "nodes2"]) results.push(await runMode(context, server.url, mode, workflow));
  } finally {
    await context?.close();
    rmSync(profile, { recursive: true, force: true });
    server.stop();
  }
  writeFileSync(join(opts.out, "results.json"), JSON.stringify(results, null, 2));
  let ok = true;
  for (const r of results) {
    for (const [name, pass] of Object.entries(r.checks)) {
      console.log(`${pass ? "PASS" : "FAIL"} ${r.mode} ${name}`);
      ok &&= pass;
    }
    const { nodeBox: n, chartBox: c } = r.measured;
    console.log(`  ${r.mode}: node x ${n.left.toFixed(0)}..${n.right.toFixed(0)}, chart x ${c.left.toFixed(0)}..${c.right.toFixed(0)}, y ${c.top.toFixed(0)}..${c.bottom.toFixed(0)} (node y ${n.top.toFixed(0)}..${n.bottom.toFixed(0)})`);
    console.log(`  ${r.mode}: learning_rate shown as ${JSON.stringify(r.measured.lrShown)}; status overflow ${r.measured.statusOverflowPx}px`);
    for (const e of r.consoleErrors) console.log(`  console error from the extension: ${e}`);
    const seen = [...new Set(r.frontEndErrors.map((e) => e.split("\n")[0]))];
    console.log(`  ${r.mode}: ${r.frontEndErrors.length} front-end console errors not from the extension: ${seen.join(" | ")}`);
  }
  console.log(ok ? "all checks passed" : "some checks failed");
  process.exit(ok ? 0 : 1);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
