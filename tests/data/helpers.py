"""Small pieces the data-pipeline tests share."""

import ml_collections

from jaxattn import configlib
from jaxattn.data import pipeline


def small_config(image_size: tuple[int, int], /, **overrides
                 ) -> ml_collections.ConfigDict:
  """The base config at a tiny image size, on 200 training examples
  (``overrides`` may set another ``image_size``)."""
  c = configlib.base_config()
  c.image_size = image_size
  c.train_split, c.val_split = "train[:200]", "test"
  c.update(overrides)
  return c


def take_batches(ds, n: int | None = None) -> list[dict]:
  """The first ``n`` batches of ``ds`` as numpy (all of them without n)."""
  it = pipeline.as_numpy(ds)
  return [next(it) for _ in range(n)] if n else list(it)
