"""Stage 3 entry points: ``deepgen train --stage 3`` (:func:`run_grpo_from_config_file`) and
``python -m deepgen.train.grpo.trainer`` (:func:`main`); :func:`user_errors` says which exceptions are the user's
to fix (one ``error:`` line, exit 2)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from ...errors import one_line
from .run_config import load_stage3_config

log = logging.getLogger("deepgen.train.grpo")

__all__ = ["main", "run_grpo_from_config_file", "user_errors"]


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


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "fix your config / data / models / folders / network" (print the message on one
    line, exit 2; no traceback): every DeepGenError, and OS errors (a missing file, a full disk, a dead host)."""
    from ...errors import DeepGenError

    return (DeepGenError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m deepgen.train.grpo.trainer",
        description="DeepGen stage 3 (MR-GRPO); same as `deepgen train --stage 3`",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--resume", default=None, help="auto | no | a checkpoint folder (overrides the config)")
    p.add_argument("overrides", nargs="*", help="key=value (TOML values), e.g. group_size=4")
    args = p.parse_args(argv)
    try:
        run_grpo_from_config_file(args.config, args.overrides, args.resume)
    except KeyboardInterrupt:
        return 130
    except user_errors() as exc:
        from ...errors import user_message

        print(f"error: {user_message(exc) or one_line(exc)}", file=sys.stderr)
        return 2
    return 0
