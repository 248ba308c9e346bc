"""jaxattn: JAX/Flax training for attention-based image classifiers."""

__all__ = ["load"]


def __getattr__(name):
  # Lazy: `import jaxattn.torch_models` (or .models) should not pay for
  # Orbax and the Experiment, which `jaxattn.load` needs.
  if name == "load":
    from jaxattn.api import load  # pylint: disable=g-import-not-at-top
    return load
  raise AttributeError(f"module 'jaxattn' has no attribute {name!r}")
