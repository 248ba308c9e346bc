"""jaxattn: JAX/Flax training for attention-based image classifiers."""

from jaxattn.api import load

__all__ = ["load"]
