"""I-JEPA in JAX/Flax."""
