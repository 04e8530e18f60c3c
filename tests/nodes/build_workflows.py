"""Writes the shipped UI-format workflows into workflows/.

Run from the repository root after changing a node's inputs:  python tests/nodes/build_workflows.py
Sockets and widget order come from the node classes, so the files always match the code; test_workflows.py
checks them either way. Hand edits saved from ComfyUI are fine too: the tests do not compare with this script.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_core_nodes import COMFYUI_VERSION, CORE_NODES, UI_EXTRA_WIDGET_VALUES
from workflow_harness import all_inputs, has_control_widget, is_widget, socket_type

from nodes import NODE_CLASS_MAPPINGS
from nodes.types import TINY_CHOICE

CLASSES = {**CORE_NODES, **NODE_CLASS_MAPPINGS}
PACK_ID, PACK_VERSION = "comfyui-deepgen", "0.1.0"

# The default prompts come from the embedded demo model's world (coloured shapes, README "Demo model"), so every
# workflow draws something recognisable out of the box; with the real model, write anything.
T2I_PROMPT = "a red circle on a blue background"
DEMO_SOURCE_PROMPT = "a yellow square on a green background"  # with DEMO_EDIT: right on seeds 0-2 at 50 steps
DEMO_EDIT = "make the square red"
MODEL_SIZE = {"width": 0, "height": 0}  # 0: the model's own size (512 for DeepGen 1.0, 64 for the demo)
DEMO_SIZE = {"width": 64, "height": 64}  # core latent nodes have no "model's own": the demo's size, in the title
EDIT_MULTI = "Place the main object of the second image into the scene of the first image, matching its lighting"
# The demo draws the sign (it never learned to write); DeepGen 1.0 also writes the quoted word that OCR scores.
SIGN_PROMPT = 'a white square on a black background with "OPEN" written on it'


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(
        self,
        kind: str,
        pos,
        widgets: dict | None = None,
        size=(320, 180),
        title: str | None = None,
        control: str = "randomize",
    ) -> dict:
        cls = CLASSES[kind]
        widgets = widgets or {}
        values, inputs = [], []
        for name, spec, required in all_inputs(cls):
            if is_widget(spec):
                if name in widgets:
                    value = widgets.pop(name)
                elif len(spec) > 1 and "default" in spec[1]:
                    value = spec[1]["default"]
                else:
                    value = spec[0][0]  # a combo without a default: its first option
                values.append(value)
                if has_control_widget(name, spec):
                    values.append(control)
            else:
                entry = {"name": name, "type": socket_type(spec), "link": None}
                if not required:
                    entry["shape"] = 7  # the front end's hollow dot for optional inputs
                inputs.append(entry)
        if widgets:
            raise KeyError(f"{kind} has no widget {sorted(widgets)}")
        values += UI_EXTRA_WIDGET_VALUES.get(kind, [])
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        outputs = [
            {"name": n, "type": t, "links": [], "slot_index": i}
            for i, (n, t) in enumerate(zip(names, cls.RETURN_TYPES))
        ]
        core = kind in CORE_NODES
        node = {
            "id": len(self.nodes) + 1,
            "type": kind,
            "pos": list(pos),
            "size": list(size),
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": inputs,
            "outputs": outputs,
            "properties": {
                "Node name for S&R": kind,
                "cnr_id": "comfy-core" if core else PACK_ID,
                "ver": COMFYUI_VERSION if core else PACK_VERSION,
            },
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, src: dict, output: str, dst: dict, input_name: str) -> None:
        slot = [o["name"] for o in src["outputs"]].index(output)
        target = [i["name"] for i in dst["inputs"]].index(input_name)
        kind = src["outputs"][slot]["type"]
        if dst["inputs"][target]["type"] != kind:
            raise TypeError(f"{src['type']}.{output} ({kind}) -> {dst['type']}.{input_name}")
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], slot, dst["id"], target, kind])
        src["outputs"][slot]["links"].append(link_id)
        dst["inputs"][target]["link"] = link_id

    def to_json(self) -> dict:
        order, done = {}, set()

        def visit(node_id):
            if node_id in done:
                return
            for link in self.links:
                if link[3] == node_id:
                    visit(link[1])
            done.add(node_id)
            order[node_id] = len(order)

        for node in self.nodes:
            visit(node["id"])
            node["order"] = order[node["id"]]
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/{self.name}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.9, "offset": [40, 60]}},
            "version": 0.4,
        }


def loader(g: Graph, pos=(0, 0)) -> dict:
    return g.add("DeepGenLoader", pos, {"checkpoint": TINY_CHOICE}, size=(340, 250))


def text_to_image() -> Graph:
    g = Graph("text_to_image")
    model = loader(g)
    enc = g.add("ThinkTokenEncode", (380, 0), {"prompt": T2I_PROMPT}, size=(400, 260))
    scb = g.add("SCBBridge", (820, 0), size=(240, 110))
    smp = g.add("DeepGenSampler", (1100, 0), dict(MODEL_SIZE), size=(300, 330))
    save = g.add("SaveImage", (1440, 0), {"filename_prefix": "DeepGen/t2i"}, size=(400, 440))
    g.link(model, "model", enc, "model")
    g.link(model, "model", scb, "model")
    g.link(enc, "think", scb, "think")
    g.link(model, "model", smp, "model")
    g.link(scb, "cond", smp, "cond")
    g.link(smp, "images", save, "images")
    return g


def text_to_image_two_pass() -> Graph:
    """Composed graph: draft at the model's size, upscale the LATENT with a core node, refine with a second
    sampler."""
    g = Graph("text_to_image_two_pass")
    model = loader(g)
    enc = g.add("ThinkTokenEncode", (380, 0), {"prompt": T2I_PROMPT}, size=(400, 260))
    scb = g.add("SCBBridge", (820, 0), size=(240, 110))
    draft = g.add("DeepGenSampler", (1100, 0), dict(MODEL_SIZE), title="Draft (the model's size)", size=(300, 330))
    up = g.add("LatentUpscaleBy", (1100, 380), {"upscale_method": "bicubic", "scale_by": 1.5}, size=(300, 110))
    refine = g.add(
        "DeepGenSampler",
        (1440, 0),
        {"denoise": 0.55},
        title="Refine (1.5x the draft)",
        size=(300, 360),
        control="fixed",
    )
    preview = g.add("PreviewImage", (1440, 420), title="Draft preview", size=(300, 320))
    save = g.add("SaveImage", (1780, 0), {"filename_prefix": "DeepGen/t2i_two_pass"}, size=(420, 460))
    for node in (enc, scb, draft, refine):
        g.link(model, "model", node, "model")
    g.link(enc, "think", scb, "think")
    g.link(scb, "cond", draft, "cond")
    g.link(scb, "cond", refine, "cond")
    g.link(draft, "latent", up, "samples")
    g.link(up, "LATENT", refine, "latent")
    g.link(draft, "images", preview, "images")
    g.link(refine, "images", save, "images")
    return g


def drawn_source(g: Graph, model: dict, y: int) -> dict:
    """A source picture drawn by the model (DEMO_SOURCE_PROMPT), so that an edit workflow shows a real edit on the
    demo model out of the box; returns its sampler (output "images"). To edit a picture of your own, connect a
    Load Image to the edit's image_1 instead."""
    enc = g.add("ThinkTokenEncode", (0, y), {"prompt": DEMO_SOURCE_PROMPT}, title="Source prompt", size=(400, 260))
    scb = g.add("SCBBridge", (440, y), size=(240, 110))
    src = g.add(
        "DeepGenSampler",
        (720, y),
        dict(MODEL_SIZE),
        title="Source picture (for your own picture: Load Image -> image_1)",
        size=(300, 330),
    )
    preview = g.add("PreviewImage", (1060, y), title="Source", size=(300, 320))
    for node in (enc, scb, src):
        g.link(model, "model", node, "model")
    g.link(enc, "think", scb, "think")
    g.link(scb, "cond", src, "cond")
    g.link(src, "images", preview, "images")
    return src


def edit_single() -> Graph:
    """Draw a source picture, then edit it with one instruction (DeepGenEdit)."""
    g = Graph("edit_single")
    model = loader(g)
    src = drawn_source(g, model, 300)
    edit = g.add("DeepGenEdit", (1440, 0), {"instruction": DEMO_EDIT}, size=(400, 520))
    save = g.add("SaveImage", (1880, 0), {"filename_prefix": "DeepGen/edit"}, size=(420, 460))
    g.link(model, "model", edit, "model")
    g.link(src, "images", edit, "image_1")
    g.link(edit, "images", save, "images")
    return g


def edit_multi() -> Graph:
    g = Graph("edit_multi_reference")
    model = loader(g)
    first = g.add("LoadImage", (0, 300), {"image": "example.png"}, title="Image 1 (scene)", size=(340, 340))
    second = g.add("LoadImage", (0, 680), {"image": "example.png"}, title="Image 2 (object)", size=(340, 340))
    edit = g.add("DeepGenEdit", (380, 0), {"instruction": EDIT_MULTI}, size=(400, 560))
    save = g.add("SaveImage", (820, 0), {"filename_prefix": "DeepGen/edit_multi"}, size=(420, 460))
    g.link(model, "model", edit, "model")
    g.link(first, "IMAGE", edit, "image_1")
    g.link(second, "IMAGE", edit, "image_2")
    g.link(edit, "images", save, "images")
    return g


def edit_composed() -> Graph:
    """The editing path spelled out: same result as DeepGenEdit with the same settings."""
    g = Graph("edit_composed")
    model = loader(g)
    src = drawn_source(g, model, 300)
    enc = g.add("ThinkTokenEncode", (1440, 0), {"prompt": DEMO_EDIT}, title="Edit instruction", size=(400, 300))
    scb = g.add("SCBBridge", (1880, 0), size=(240, 110))
    smp = g.add("DeepGenSampler", (2160, 0), dict(MODEL_SIZE), size=(300, 330))
    save = g.add("SaveImage", (2500, 0), {"filename_prefix": "DeepGen/edit_composed"}, size=(420, 460))
    for node in (enc, scb, smp):
        g.link(model, "model", node, "model")
    g.link(src, "images", enc, "image_1")
    g.link(enc, "think", scb, "think")
    g.link(scb, "cond", smp, "cond")
    g.link(smp, "images", save, "images")
    return g


def best_of_n() -> Graph:
    g = Graph("best_of_n")
    model = loader(g)
    enc = g.add("ThinkTokenEncode", (380, 0), {"prompt": SIGN_PROMPT}, size=(400, 260))
    scb = g.add("SCBBridge", (820, 0), size=(240, 110))
    smp = g.add("DeepGenSampler", (1100, 0), {**MODEL_SIZE, "batch_size": 4}, size=(300, 330))
    score = g.add("RewardScore", (1440, 0), {"prompt": SIGN_PROMPT, "rewards": "ocr"}, size=(420, 420))
    preview = g.add("PreviewImage", (1440, 460), title="All candidates", size=(420, 360))
    save = g.add("SaveImage", (1900, 0), {"filename_prefix": "DeepGen/best_of_n"}, title="Best image", size=(420, 460))
    for node in (enc, scb, smp):
        g.link(model, "model", node, "model")
    g.link(enc, "think", scb, "think")
    g.link(scb, "cond", smp, "cond")
    g.link(smp, "images", score, "images")
    g.link(smp, "images", preview, "images")
    g.link(score, "best_image", save, "images")
    return g


def _native_sampling(g: Graph, model: dict, scb: dict, x: int, title_size: str) -> dict:
    """EmptySD3LatentImage -> KSampler (euler + normal: DeepGenSampler's result) -> VAEDecode; returns VAEDecode."""
    latent = g.add("EmptySD3LatentImage", (x, 380), dict(DEMO_SIZE), title=title_size, size=(300, 130))
    ks = g.add(
        "KSampler",
        (x, 0),
        {"steps": 50, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"},
        title="KSampler (euler + normal = DeepGenSampler)",
        size=(300, 330),
    )
    dec = g.add("VAEDecode", (x + 340, 0), size=(220, 60))
    g.link(model, "MODEL", ks, "model")
    g.link(scb, "positive", ks, "positive")
    g.link(scb, "negative", ks, "negative")
    g.link(latent, "LATENT", ks, "latent_image")
    g.link(ks, "LATENT", dec, "samples")
    g.link(model, "VAE", dec, "vae")
    return dec


def text_to_image_native() -> Graph:
    """DeepGen's conditioning through ComfyUI's own KSampler and VAEDecode (the native MODEL and VAE)."""
    g = Graph("text_to_image_native")
    model = loader(g)
    enc = g.add("ThinkTokenEncode", (380, 0), {"prompt": T2I_PROMPT}, size=(400, 260))
    scb = g.add("SCBBridge", (820, 0), size=(240, 110))
    dec = _native_sampling(g, model, scb, 1100, "Image size (the demo's; DeepGen 1.0: 512 or more)")
    save = g.add("SaveImage", (1700, 0), {"filename_prefix": "DeepGen/t2i_native"}, size=(400, 440))
    g.link(model, "model", enc, "model")
    g.link(model, "model", scb, "model")
    g.link(enc, "think", scb, "think")
    g.link(dec, "IMAGE", save, "images")
    return g


def edit_native() -> Graph:
    """An edit through KSampler: the reference latents travel in SCBBridge's CONDITIONING."""
    g = Graph("edit_native")
    model = loader(g)
    src = drawn_source(g, model, 600)
    enc = g.add("ThinkTokenEncode", (380, 0), {"prompt": DEMO_EDIT}, title="Edit instruction", size=(400, 300))
    scb = g.add("SCBBridge", (820, 0), size=(240, 110))
    dec = _native_sampling(g, model, scb, 1100, "Result size (the reference's: the demo's 64; DeepGen 1.0: 512)")
    save = g.add("SaveImage", (1700, 0), {"filename_prefix": "DeepGen/edit_native"}, size=(420, 460))
    g.link(model, "model", enc, "model")
    g.link(model, "model", scb, "model")
    g.link(src, "images", enc, "image_1")
    g.link(enc, "think", scb, "think")
    g.link(dec, "IMAGE", save, "images")
    return g


def sample_with_trained(g: Graph, train: dict, previews: str, title: str, *, x: int, prompt: str, sampler: dict):
    """The right half of a training workflow: sample `prompt` with the trained model (the LoRA applied) and save
    it, and preview the training node's `previews` images below."""
    enc = g.add("ThinkTokenEncode", (x, 0), {"prompt": prompt}, size=(400, 260))
    scb = g.add("SCBBridge", (x + 440, 0), size=(240, 110))
    smp = g.add("DeepGenSampler", (x + 720, 0), {"width": 0, "height": 0, **sampler}, size=(300, 330))
    save = g.add("SaveImage", (x + 1060, 0), {"filename_prefix": f"DeepGen/{g.name}"}, size=(420, 460))
    preview = g.add("PreviewImage", (x, 320), title=title, size=(400, 360))
    for node in (enc, scb, smp):
        g.link(train, "model", node, "model")
    g.link(enc, "think", scb, "think")
    g.link(scb, "cond", smp, "cond")
    g.link(smp, "images", save, "images")
    g.link(train, previews, preview, "images")


def lora_finetune() -> Graph:
    """Dataset folder -> DeepGenTrainLoRA -> sample with the LoRA (+ validation previews)."""
    g = Graph("lora_finetune")
    model = loader(g)
    train = g.add(
        "DeepGenTrainLoRA",
        (380, 0),
        {
            "dataset": "deepgen_lora_dataset",
            "lora_name": "my_deepgen_lora",
            # the demo model's world (README "Demo model"); for a real style LoRA: "… in the style of …"
            "validation_prompt": "a red circle on a blue background",
        },
        size=(400, 640),
    )
    g.link(model, "model", train, "model")
    sample_with_trained(
        g, train, "validation_images", "Validation images (each save and the end)", x=820,
        prompt="a green triangle on a white background", sampler={},
    )  # fmt: skip
    return g


RL_PROMPTS = (
    "a red circle on a blue background\na green triangle on a white background\na yellow square on a black background"
)


def rl_finetune() -> Graph:
    """Prompts + a reward the demo model can move (brightness) -> DeepGenTrainRL -> sample with the LoRA; the
    node draws the per-reward chart, the eval images show before training and at each eval."""
    g = Graph("rl_finetune")
    model = loader(g)
    train = g.add(
        "DeepGenTrainRL",
        (380, 0),
        {
            "prompts": RL_PROMPTS,
            "rewards": "brightness=1",
            "lora_name": "my_deepgen_rl",
            "steps": 40,  # sized for the demo model on a CPU; a real run: the 1-GPU defaults (1500 steps, 512 px)
            "learning_rate": 3e-3,  # the demo: eval brightness 0.27 → 0.92 over 40 steps (1e-3: 0.27 → 0.49)
            "rank": 8,
            "group_size": 4,
            "prompts_per_step": 2,
            "save_every": 10,
            "eval_every": 10,
            "sampling_steps": 8,
        },
        size=(420, 900),
    )
    g.link(model, "model", train, "model")
    sample_with_trained(
        g, train, "eval_images", "Eval images (before training, then each eval)", x=840,
        prompt="a red circle on a blue background", sampler={"steps": 8},
    )  # fmt: skip
    return g


WORKFLOWS = {
    "deepgen_text_to_image_native.json": text_to_image_native,
    "deepgen_edit_native.json": edit_native,
    "deepgen_text_to_image.json": text_to_image,
    "deepgen_text_to_image_two_pass.json": text_to_image_two_pass,
    "deepgen_edit.json": edit_single,
    "deepgen_edit_multi_reference.json": edit_multi,
    "deepgen_edit_composed.json": edit_composed,
    "deepgen_best_of_n.json": best_of_n,
    "deepgen_lora_finetune.json": lora_finetune,
    "deepgen_rl_finetune.json": rl_finetune,
}


def main() -> None:
    out = ROOT / "workflows"
    out.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (out / name).write_text(json.dumps(build().to_json(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(WORKFLOWS)} workflows to workflows/")


if __name__ == "__main__":
    main()
