r"""Print a config's model: parameters per module, total and trainable.

  python -m jaxattn.summary --config=configs/cifar10_convvit.py
  python -m jaxattn.summary --config=configs/quickstart.py:smoke

Needs no data: classes and channels come from the dataset's metadata (TFDS
builder code for ``tfds:`` datasets, nothing is downloaded). The last line
is machine-readable: ``total_params=N trainable_params=M``. Parameters count
as PyTorch counts them: BatchNorm running statistics are not parameters;
``config.frozen_params`` are parameters but not trainable.
"""

from __future__ import annotations

import collections
import sys

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from jaxattn import optim, train
from jaxattn.data import sources


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module (the converter does) beside other absl programs defines none."""
  config_flags.DEFINE_config_file("config", None, "Config file[:ARGS].",
                                  lock_config=True)


class _AssumedMetadata:
  """Stands in for an image folder that is not on this machine."""

  def __init__(self, name: str, num_classes: int):
    self.name, self.num_classes = name, num_classes
    self.class_names = [str(i) for i in range(num_classes)]
    self.image_shape = (None, None, 3)


def metadata_source(config: ml_collections.ConfigDict):
  """The dataset's classes and shapes without reading (or fetching) data."""
  kind, _, name = config.dataset.partition(":")
  if kind == "tfds":
    return sources.MockSource(name)
  try:
    return train.get_source(config)
  except sources.DatasetError:
    if kind != "folder" or not config.num_classes:
      raise
    # The count does not depend on the images when the config fixes the
    # classes (seed 001's 1000-way head): assume RGB.
    print(f"({config.dataset} not found: assuming RGB images and "
          f"config.num_classes={config.num_classes})")
    return _AssumedMetadata(config.dataset, config.num_classes)


def parameter_table(config: ml_collections.ConfigDict
                    ) -> tuple[list[tuple[str, int, int]], int, int]:
  """([(module, params, trainable)], total, trainable) of the config's model."""
  config = train.resolve_config(config, metadata_source(config),
                                check_splits=False)
  model = train.build_model(config)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(
          (1, *train.image_shape(config))), train=False))
  params = variables["params"]
  paths = jax.tree.leaves(optim.param_paths(params))
  sizes = [x.size for x in jax.tree.leaves(params)]
  frozen = (jax.tree.leaves(optim.frozen_mask(params, config.frozen_params))
            if config.frozen_params else [False] * len(sizes))
  rows = collections.OrderedDict()
  for path, size, is_frozen in zip(paths, sizes, frozen):
    module = path.rpartition("/")[0] or "(top)"
    total, trainable = rows.get(module, (0, 0))
    rows[module] = (total + size, trainable + (0 if is_frozen else size))
  table = [(m, t, tr) for m, (t, tr) in rows.items()]
  return table, sum(sizes), sum(s for s, f in zip(sizes, frozen) if not f)


def main(argv):
  del argv
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError("--config=configs/NAME.py[:ARGS] is required.")
  table, total, trainable = parameter_table(config)
  width = max(len("module"), *(len(m) for m, _, _ in table))
  print(f"{'module':<{width}}  {'params':>12}  {'trainable':>12}")
  for module, count, train_count in table:
    print(f"{module:<{width}}  {count:>12,}  {train_count:>12,}")
  print(f"total_params={total} trainable_params={trainable}")
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
