"""Judge backends for the pairwise preference reward.

Why two: the official run serves UnifiedReward-Think with vLLM behind an OpenAI-compatible
API (reference §2.2), while a single-GPU user may prefer to load a Qwen2.5-VL judge in
process. Both take ``(text, image_1, image_2)`` items and return the raw answer text,
or None for a failed call (counted as a tie by the reward).
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image

from ..errors import CheckpointError, ResourceError
from ..model.vlm import vision_tower
from .base import cached_model, default_device, require_model_dir
from .images import image_to_data_url

__all__ = ["EndpointJudge", "QwenVLJudge", "DEFAULT_JUDGE_DIR", "JUDGE_REPO_ID"]

log = logging.getLogger(__name__)

DEFAULT_JUDGE_DIR = "models/deepgen/unifiedreward-think"
JUDGE_REPO_ID = "CodeGoat24/UnifiedReward-Think-qwen-7b"  # Qwen2.5-VL-7B based


class EndpointJudge:
    """OpenAI-compatible ``/v1/chat/completions`` client (e.g. vLLM), standard library only.

    Defaults follow the official client: model name "UnifiedReward", temperature 0,
    max_tokens 4096, images as JPEG-95 base64 data URLs before the text, retries with
    exponential backoff capped at 10 s. ``url`` may be the server root, ``.../v1`` or the
    full ``.../chat/completions`` address.
    """

    def __init__(
        self,
        url: str,
        model: str = "UnifiedReward",
        timeout: float = 160.0,
        max_retries: int = 3,
        backoff: float = 2.0,
        backoff_cap: float = 10.0,
        max_workers: int = 8,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        api_key: str | None = None,
        system_prompt: str | None = None,
        jpeg_quality: int = 95,
    ):
        self.endpoint = _chat_url(url)
        self.model = model
        self.timeout = float(timeout)
        self.max_retries = max(1, int(max_retries))
        self.backoff = float(backoff)
        self.backoff_cap = float(backoff_cap)
        self.max_workers = max(1, int(max_workers))
        self.temperature = temperature
        self.max_tokens = int(max_tokens)
        self.api_key = api_key
        self.system_prompt = system_prompt
        self.jpeg_quality = jpeg_quality

    def probe(self, timeout: float = 5.0) -> None:
        """Check once that the judge's host accepts a TCP connection (through the proxy that ``urllib`` would
        use, if one is set), within ``timeout`` seconds; else raise :class:`ResourceError` naming the URL.

        A TCP connect, not a chat request: it costs nothing on the server, needs no model name or API key, and
        a dead address is what turns a whole RL run into KL/SFT training (every comparison a 0.5 tie)."""
        from ..net import tcp_probe

        try:
            tcp_probe(self.endpoint, timeout)
        except ResourceError as e:
            raise ResourceError(
                f"the preference judge at {self.endpoint} cannot be reached ({e}): start the judge server (e.g. "
                "vLLM serving UnifiedReward-Think), fix the url of [rewards.preference], or drop 'preference' from "
                "category_weights"
            ) from None

    def payload(self, text: str, urls: list[str]) -> dict:
        content = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        content.append({"type": "text", "text": text})
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": content})
        return {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def request(self, payload: dict) -> str:
        """One POST with retries; returns the answer text or raises the last error."""
        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        err: Exception | None = None
        for attempt in range(1, self.max_retries + 1):
            try:
                req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return _message_text(data)
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
                err = e
                if attempt < self.max_retries:
                    time.sleep(min(self.backoff**attempt if self.backoff > 0 else 0.0, self.backoff_cap))
        raise RuntimeError(f"judge request to {self.endpoint} failed after {self.max_retries} tries: {err}")

    def judge_many(self, items: list[tuple[str, Image.Image, Image.Image]]) -> list[str | None]:
        urls: dict[int, str] = {}  # each image is in G-1 pairs: encode it once

        def url_of(im):
            if id(im) not in urls:
                urls[id(im)] = image_to_data_url(im, self.jpeg_quality)
            return urls[id(im)]

        payloads = [self.payload(t, [url_of(a), url_of(b)]) for t, a, b in items]

        errors: list[str] = []

        def one(p):
            try:
                return self.request(p)
            except Exception as e:
                errors.append(str(e))
                log.debug("%s", e)
                return None

        if len(payloads) <= 1 or self.max_workers == 1:
            out = [one(p) for p in payloads]
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_workers, len(payloads))) as ex:
                out = list(ex.map(one, payloads))
        if errors:  # one line per call, not one per pair
            log.warning("preference judge: %d of %d requests failed (first: %s)", len(errors), len(payloads), errors[0])
        return out


def _chat_url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def _message_text(data: dict) -> str:
    content = data["choices"][0]["message"]["content"]
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise ValueError("no text content in the judge response")
    return content


class QwenVLJudge:
    """In-process Qwen2.5-VL judge (e.g. UnifiedReward-Think-qwen-7b) from a local folder.

    Greedy decoding (the official temperature 0). The model loads on first use with
    ``local_files_only=True`` and no remote code, and is cached per (path, device, dtype).
    ``max_pixels`` downsizes images before the processor to bound the vision tokens.
    If ``AutoProcessor`` cannot be built (transformers 5 needs torchvision for the Qwen
    video processor), the same inputs are built from the tokenizer and image processor.
    """

    def __init__(
        self,
        model_path: str | Path = DEFAULT_JUDGE_DIR,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 4096,
        max_pixels: int | None = None,
        system_prompt: str | None = "You are a helpful assistant.",
    ):
        self.model_path = model_path
        self.device = torch.device(device or default_device())
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_new_tokens = int(max_new_tokens)
        self.max_pixels = max_pixels
        self.system_prompt = system_prompt

    def load(self):
        """Returns (model, processor), loading them on first use."""
        path = require_model_dir(self.model_path, "Preference judge (Qwen2.5-VL)", JUDGE_REPO_ID)
        key = ("qwen-vl-judge", str(path), str(self.device), str(self.dtype))
        return cached_model(key, lambda device: _load_qwen(path, device, self.dtype), self.device)

    def chat_text(self, processor, text: str) -> str:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append(
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": text}]}
        )
        if getattr(processor, "chat_template", None):
            return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # Qwen2.5-VL's own template, for folders that ship none
        sys = f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n" if self.system_prompt else ""
        vis = "<|vision_start|><|image_pad|><|vision_end|>" * 2
        return f"{sys}<|im_start|>user\n{vis}{text}<|im_end|>\n<|im_start|>assistant\n"

    def generation_kwargs(self) -> dict:
        """Extra ``generate`` arguments (none: the judge folder's generation config holds its stop tokens)."""
        return {}

    @torch.inference_mode()
    def generate(self, text: str, images: list[Image.Image]) -> str:
        model, processor = self.load()
        images = [_limit_pixels(im.convert("RGB"), self.max_pixels) for im in images]
        inputs = processor(text=[self.chat_text(processor, text)], images=images, return_tensors="pt")
        accepted = set(inspect.signature(model.forward).parameters)
        # where the model is now (a model manager may have moved it), pixels in its vision tower's dtype (the
        # compute dtype even when the tower's blocks are stored in fp8)
        inputs = {k: v.to(model.device) for k, v in inputs.items() if k in accepted}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(vision_tower(model).dtype)
        out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **self.generation_kwargs())
        new = out[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(new, skip_special_tokens=True)[0]

    def judge_many(self, items: list[tuple[str, Image.Image, Image.Image]]) -> list[str | None]:
        self.load()  # a missing folder is an error, not a tie
        out: list[str | None] = []
        for text, a, b in items:
            try:
                out.append(self.generate(text, [a, b]))
            except Exception as e:  # one bad generation counts as a tie
                log.warning("local judge failed on one pair: %s", e)
                out.append(None)
        return out


def _limit_pixels(im: Image.Image, max_pixels: int | None) -> Image.Image:
    if not max_pixels or im.width * im.height <= max_pixels:
        return im
    s = (max_pixels / (im.width * im.height)) ** 0.5
    return im.resize((max(1, int(im.width * s)), max(1, int(im.height * s))), Image.Resampling.BICUBIC)


def _load_qwen(path: Path, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if cfg.model_type != "qwen2_5_vl":
        raise CheckpointError(
            f"{path} holds a {cfg.model_type!r} model; the local judge needs a Qwen2.5-VL (qwen2_5_vl) model"
        )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    # transformers types PreTrainedModel.to's first argument as the model itself
    model = model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
    return model, _load_processor(path, cfg)


def _load_processor(path: Path, cfg):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # e.g. no torchvision for the video processor
        log.info("AutoProcessor unavailable for %s (%s); using tokenizer + image processor", path, e)
        return _QwenInputs(path, cfg)


class _QwenInputs:
    """What Qwen2.5-VL's processor does for images: expand each <|image_pad|> and tokenize."""

    image_token = "<|image_pad|>"

    def __init__(self, path: Path, cfg):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.image_processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        self.chat_template = getattr(self.tokenizer, "chat_template", None)
        # convert_tokens_to_ids is typed int | list[int]; one token in gives one id out
        token_id = getattr(cfg, "image_token_id", None)
        if not token_id:
            token_id = cast(int, self.tokenizer.convert_tokens_to_ids(self.image_token))
        self.image_token_id = int(token_id)

    def apply_chat_template(self, messages, **kw):
        return self.tokenizer.apply_chat_template(messages, **kw)

    def __call__(self, text: list[str], images: list[Image.Image], return_tensors: str = "pt"):
        vis = self.image_processor(images=images, return_tensors="pt")
        merge = int(getattr(self.image_processor, "merge_size", 2)) ** 2
        counts = [int(t.prod()) // merge for t in vis["image_grid_thw"]]
        return image_chat_inputs(self.tokenizer, text, counts, self.image_token, self.image_token_id, dict(vis))

    def batch_decode(self, ids, **kw):
        return self.tokenizer.batch_decode(ids, **kw)


def image_chat_inputs(tokenizer, text: list[str], counts: list[int], image_token: str, image_token_id: int, vision):
    """What Qwen2.5-VL's processor returns: each ``image_token`` of ``text`` repeated to its image's vision-token
    count (``counts``, in order), tokenized, with the vision inputs and the ``mm_token_type_ids`` that
    transformers 5 reads to place the images' M-RoPE positions."""
    out_text, k = [], 0
    for s in text:
        parts = s.split(image_token)
        buf = parts[0]
        for p in parts[1:]:
            buf += "<|placeholder|>" * counts[k] + p
            k += 1
        out_text.append(buf.replace("<|placeholder|>", image_token))
    enc = dict(tokenizer(out_text, return_tensors="pt", padding=True))
    enc["mm_token_type_ids"] = (enc["input_ids"] == image_token_id).to(torch.int32)
    enc.update(vision)
    return enc
