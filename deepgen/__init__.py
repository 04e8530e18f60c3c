"""DeepGen 1.0 library."""
