"""Errors that tell a user what is wrong with the files they pointed us at, and what to do."""


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be loaded as DeepGen (wrong model, truncated, missing keys...)."""


def format_keys(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")
