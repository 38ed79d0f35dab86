"""Slim trainers (JAX behaviour cloning, Torch LoRA) that consume rldskit loaders. See issue #6."""
