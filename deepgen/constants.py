"""Fixed facts of DeepGen 1.0, taken from the official code (see docs/design.md and the reference).

Everything a user's output depends on lives here once, so that the prompt templates, token ids and
normalisation constants cannot drift between the pipeline, the trainer and the nodes.
"""

# Qwen2.5-VL special tokens (real ids of the Qwen2.5-VL-3B-Instruct tokenizer).
PAD_TOKEN_ID = 151643  # <|endoftext|>, used for left padding
IM_START_TOKEN_ID = 151644
IM_END_TOKEN_ID = 151645
VISION_START_TOKEN_ID = 151652
VISION_END_TOKEN_ID = 151653
IMAGE_PAD_TOKEN_ID = 151655

IMAGE_START_TOKEN = "<|vision_start|>"
IMAGE_END_TOKEN = "<|vision_end|>"
IMAGE_CONTEXT_TOKEN = "<|image_pad|>"

# Chat template without a system prompt (the official code never uses one).
INSTRUCTION_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
# Text-to-image prompts get this prefix; edit instructions do not.
GENERATION_TEMPLATE = "Generate an image: {input}"

# Negative prompt of every official edit script (img_edit.py, gedit.py, INFERENCE.md).
EDIT_NEGATIVE_PROMPT = (
    "blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, damaged details, "
    "artifacts, glitch, noise, pixelated, grainy, compression artifacts, bad composition, wrong proportion, "
    "incomplete editing, unfinished, unedited areas."
)
# The T2I negative is the empty prompt, templated like any other prompt.
T2I_NEGATIVE_PROMPT = ""

# Reference images enter the vision tower at 28/32 of their size, CLIP-normalised.
VISION_RESIZE_FACTOR = 28 / 32
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Number of VLM hidden states stacked by SCB and the stride between them.
SCB_NUM_TAPS = 6
SCB_TAP_STRIDE = 6

# Official inference defaults (evaluation scripts and INFERENCE.md).
DEFAULT_STEPS = 50
DEFAULT_CFG = 4.0
DEFAULT_HEIGHT = 512
DEFAULT_WIDTH = 512

# LoRA of the released VLM: r=64, alpha=128 -> scaling 2.0. Alpha is not stored in checkpoints.
VLM_LORA_RANK = 64
VLM_LORA_ALPHA = 128


def scb_tap_indices(num_layers: int) -> list[int]:
    """Hidden-state indices SCB stacks, deepest first: range(L-1, 0, -6)[:6] = [35, 29, 23, 17, 11, 5] for L=36.

    hidden_states[0] is the embedding output, so index k is the raw output of decoder layer k-1.
    """
    taps = list(range(num_layers - 1, 0, -SCB_TAP_STRIDE))[:SCB_NUM_TAPS]
    if len(taps) != SCB_NUM_TAPS:
        raise ValueError(
            f"SCB needs a VLM with at least {SCB_TAP_STRIDE * (SCB_NUM_TAPS - 1) + 2} layers, got {num_layers}"
        )
    return taps
