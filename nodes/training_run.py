"""What both training nodes (DeepGenTrainLoRA, DeepGenTrainRL) share while a run goes: the base of their trainer
callbacks, the swap of inference-mode weights for trainable ones, and PIL images -> IMAGE batches."""

from __future__ import annotations

from . import comfy_services as cs


class TrainingNodeCallback:
    """What both training nodes do with a trainer's callbacks: the progress bar with
    image previews, the interrupt button, and status text for checkpoints and interrupts."""

    def __init__(self, node_id, total_steps: int, desc: str):
        self.node_id = None if node_id is None else str(node_id)
        self.bar = cs.Progress(total_steps, node_id=self.node_id, desc=desc)

    def check_interrupt(self) -> None:
        cs.check_interrupt()

    def on_checkpoint(self, run, step, path, reason) -> None:
        if path is not None and reason != "final":
            cs.send_progress_text(f"step {step}: checkpoint saved ({reason})", self.node_id)

    def on_validation(self, run, step, images, paths) -> None:
        if images:
            self.bar.update_absolute(step, run.total_steps, ("JPEG", images[0], 512))

    def on_export(self, run, paths) -> None:
        pass

    def on_interrupt(self, run, step, checkpoint, exc) -> None:
        cs.send_progress_text(f"interrupted at step {step}; queue again with resume on to continue", self.node_id)

    def on_train_end(self, run, result) -> None:
        self.bar.close()


def detach_inference_tensors(model) -> None:
    """ComfyUI runs nodes under torch.inference_mode(): weights created there cannot take part in autograd.
    Swap such tensors for ordinary copies (same values; other nodes do not notice)."""
    import torch

    copies: dict[int, torch.Tensor] = {}  # tied weights (lm_head = embed_tokens) stay tied
    with torch.inference_mode(False):
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.is_inference():
                    if id(param) not in copies:
                        copies[id(param)] = torch.nn.Parameter(param.clone(), requires_grad=param.requires_grad)
                    module._parameters[name] = copies[id(param)]
            for name, buf in list(module._buffers.items()):
                if buf is not None and buf.is_inference():
                    if id(buf) not in copies:
                        copies[id(buf)] = buf.clone()
                    module._buffers[name] = copies[id(buf)]


def to_image_batch(images):
    """PIL images -> a ComfyUI IMAGE batch (all at the first one's size); one black 64 px image for none."""
    import numpy as np
    import torch

    if not images:
        return torch.zeros(1, 64, 64, 3)
    size = images[0].size
    arrays = [np.asarray(im.convert("RGB").resize(size), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))
