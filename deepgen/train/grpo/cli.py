"""Stage 3 entry points: ``deepgen train --stage 3`` (:func:`run_grpo_from_config_file`) and
``python -m deepgen.train.grpo.trainer`` (:func:`main`, which reports errors as the ``deepgen`` CLI does:
``deepgen.errors.run_cli``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

from ...errors import run_cli
from .run_config import load_stage3_config

log = logging.getLogger("deepgen.train.grpo")

__all__ = ["main", "run_grpo_from_config_file"]


def run_grpo_from_config_file(
    path: str | os.PathLike, overrides: list[str] | None = None, resume: str | None = None
) -> None:
    """``deepgen train --stage 3 --config FILE [key=value ...]``: load, override, run.

    ``resume`` (the CLI's ``--resume``), when given, replaces the config's ``resume`` (auto | no | folder).
    """
    overrides = list(overrides or [])
    if resume is not None:
        overrides.append(f"resume={json.dumps(str(resume))}")
    cfg = load_stage3_config(path, overrides)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)
    from .trainer import run_grpo

    run_grpo(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m deepgen.train.grpo.trainer",
        description="DeepGen stage 3 (MR-GRPO); same as `deepgen train --stage 3`",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--resume", default=None, help="auto | no | a checkpoint folder (overrides the config)")
    p.add_argument("overrides", nargs="*", help="key=value (TOML values), e.g. group_size=4")
    args = p.parse_args(argv)

    def run() -> int:
        run_grpo_from_config_file(args.config, args.overrides, args.resume)
        return 0

    return run_cli(run)
