"""The two halves of `DeepGenPipeline.encode` that the ComfyUI nodes expose separately.

`encode_think` (ThinkTokenEncode) is `pipe.think`, `bridge_think` (SCBBridge) is `pipe.bridge`;
`bridge_think(pipe, encode_think(pipe, ...))` equals `pipe.encode(...)`. Kept as functions for the nodes.
"""

from __future__ import annotations

from .pipeline import Conditioning, DeepGenPipeline, Think


def encode_think(pipe: DeepGenPipeline, *args, **kwargs) -> Think:
    return pipe.think(*args, **kwargs)


def bridge_think(pipe: DeepGenPipeline, think: Think, reference_noise=None) -> Conditioning:
    return pipe.bridge(think, reference_noise)


__all__ = ["Think", "encode_think", "bridge_think"]
