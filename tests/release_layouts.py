"""Writers for release layouts the library reads but does not write itself (shared by the tests)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file


def save_diffusers_release(model, root: Path) -> None:
    """The DeepGen-1.0-diffusers layout: vlm/ (LoRA merged), transformer/, vae/, scheduler/, connector/.

    Its connector/ names the SigLIP layers without the `connector.` prefix (one of the spellings the loader maps).
    """
    root = Path(root)
    model.lmm.save_pretrained(root / "vlm")
    model.tokenizer.save_pretrained(root / "vlm")
    model.transformer.save_pretrained(root / "transformer")
    model.vae.save_pretrained(root / "vae")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config))
    (root / "connector").mkdir()
    scb = {
        k.replace("connector.layers.", "encoder.layers."): v.contiguous()
        for k, v in model.trained_state_dict().items()
        if not k.startswith("transformer.")
    }
    save_file(scb, str(root / "connector" / "model.safetensors"))
    (root / "connector" / "config.json").write_text(json.dumps(model.connector.config.to_dict()))
