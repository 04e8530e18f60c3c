"""The loading layer's errors: the project-wide family (deepgen.errors), named where loaders import them."""

from ..errors import CheckpointError, UnsafePathError, format_keys

__all__ = ["CheckpointError", "UnsafePathError", "format_keys"]
