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
import ml_collections
from absl import app

from jaxattn import configlib, experiment, optim


def define_flags() -> None:
  """The command's flags; defined only when it runs, so that importing this
  module beside other absl programs defines none."""
  configlib.define_config_flag()


def parameter_table(config: ml_collections.ConfigDict
                    ) -> tuple[list[tuple[str, int, int]], int, int]:
  """([(module, params, trainable)], total, trainable) of the config's model."""
  exp = experiment.Experiment(config, data="metadata")
  config, params = exp.config, exp.abstract_state.params
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
  try:
    config = configlib.config_from_flag()
  except configlib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  table, total, trainable = parameter_table(config)
  width = max(len("module"), *(len(m) for m, _, _ in table))
  print(f"{'module':<{width}}  {'params':>12}  {'trainable':>12}")
  for module, count, train_count in table:
    print(f"{module:<{width}}  {count:>12,}  {train_count:>12,}")
  print(f"total_params={total} trainable_params={trainable}")
  sys.stdout.flush()


if __name__ == "__main__":
  from jaxattn import configlib, console  # pylint: disable=g-import-not-at-top
  # --config=NAME[:ARG] may name a config bundled with the package.
  sys.argv = configlib.expand_bundled_config(sys.argv)
  define_flags()
  console.run(main)  # app.run, with --library_logs and --traceback.
