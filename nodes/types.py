"""Socket type names, categories, display names and the widget specs several nodes share.

Custom sockets carry a DEEPGEN_ prefix; at the edges the nodes use ComfyUI's own IMAGE, LATENT,
CONDITIONING, FLOAT, INT and STRING.
"""

from __future__ import annotations

# Custom socket types (links connect only equal type strings).
DEEPGEN_MODEL = "DEEPGEN_MODEL"
DEEPGEN_THINK = "DEEPGEN_THINK"
DEEPGEN_COND = "DEEPGEN_COND"

# ComfyUI's native types.
IMAGE = "IMAGE"
LATENT = "LATENT"
CONDITIONING = "CONDITIONING"
MODEL = "MODEL"
VAE = "VAE"

CATEGORY = "DeepGen 1.0"
DISPLAY_SUFFIX = " (DeepGen 1.0)"

MAX_RESOLUTION = 8192  # nodes.MAX_RESOLUTION in ComfyUI
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # what KSampler accepts
SIZE_MULTIPLE = 16  # deepgen.sizes.OUTPUT_MULTIPLE (VAE /8, then DiT patch 2)

TINY_CHOICE = "deepgen-demo (tiny, trained on shapes)"
# What workflows saved before the demo model was trained hold; they load the same embedded demo.
LEGACY_TINY_CHOICES = ("deepgen-tiny (random weights, demo)",)
REFERENCE_RESIZE = ["fix_pixels", "longest_side", "square", "keep"]


def category(sub: str) -> str:
    return f"{CATEGORY}/{sub}"


def display_name(name: str) -> str:
    return name + DISPLAY_SUFFIX


# ---- widget specs shared by DeepGenSampler and DeepGenEdit (same names, so workflows read alike) ---------


def size_input(which: str, default: int) -> tuple:
    return (
        "INT",
        {
            "default": default,
            "min": 0,
            "max": MAX_RESOLUTION,
            "step": SIZE_MULTIPLE,
            "tooltip": f"Output {which} in pixels, a multiple of {SIZE_MULTIPLE}. 0 = the size of the first "
            "reference image (edits), or the model's own size without references (512; the demo: 64). "
            "Ignored when a latent is given.",
        },
    )


def sampler_inputs(default_size: int) -> dict:
    """width, height, batch_size, steps, cfg, shift, seed: the widgets every DeepGen sampling node has."""
    return {
        "width": size_input("width", default_size),
        "height": size_input("height", default_size),
        "batch_size": (
            "INT",
            {
                "default": 1,
                "min": 1,
                "max": 64,
                "tooltip": "Images per prompt. Image i uses seed + i, so a batch reproduces "
                "single runs with consecutive seeds.",
            },
        ),
        "steps": (
            "INT",
            {
                "default": 50,
                "min": 1,
                "max": 1000,
                "tooltip": "Denoising steps (flow-matching Euler). The official setting is 50.",
            },
        ),
        "cfg": (
            "FLOAT",
            {
                "default": 4.0,
                "min": 0.0,
                "max": 30.0,
                "step": 0.1,
                "round": 0.01,
                "tooltip": "Classifier-free guidance scale. Official: 4.0 (7.5 for dense prompts). "
                "1.0 or less runs the prompt alone (faster, no negative).",
            },
        ),
        "shift": (
            "FLOAT",
            {
                "default": 3.0,
                "min": 0.0,
                "max": 100.0,
                "step": 0.05,
                "round": 0.01,
                "tooltip": "Timestep shift of the flow-matching schedule (SD3.5: 3.0). "
                "0 uses the value in the checkpoint's scheduler config.",
            },
        ),
        "seed": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": MAX_SEED,
                "control_after_generate": True,
                "tooltip": "Noise seed; the same seed and settings give the same image on any device.",
            },
        ),
    }


def reference_resize_input() -> tuple:
    return (
        REFERENCE_RESIZE,
        {
            "default": "fix_pixels",
            "tooltip": "How reference images are resized to sides that are multiples of 32: fix_pixels (about "
            "512x512 pixels, aspect kept; the training rule), longest_side (longest side 512), square "
            "(512x512, the official benchmark scripts) or keep (no resize; the size must already be a "
            "multiple of 32).",
        },
    )


def size_suggestion(value: int) -> str:
    """The valid sizes next to `value`, without repeats or 0 (e.g. 13 -> "16", 520 -> "512 or 528")."""
    lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
    options = sorted({v for v in (lower, lower + SIZE_MULTIPLE) if 0 < v <= MAX_RESOLUTION})
    return " or ".join(str(v) for v in options)


def check_size(name: str, value) -> str | None:
    """Plain-words error for a width/height widget value, or None when it is valid (0 means auto)."""
    if value is None:  # linked input: checked when the node runs
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        return f"{name} must be a whole number of pixels, got {value!r}"
    if value < 0 or value > MAX_RESOLUTION:
        return f"{name} must be between 0 and {MAX_RESOLUTION}, got {value}"
    if value % SIZE_MULTIPLE:
        return f"{name} {value} is not a multiple of {SIZE_MULTIPLE} (try {size_suggestion(value)})"
    return None
