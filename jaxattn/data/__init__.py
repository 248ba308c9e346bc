"""The input side: datasets, the tf.data pipeline, and image files.

Only the input pipeline needs TensorFlow and TFDS, which come with the
``data`` extra (``pip install "jaxattn[data]"``):

* ``sources`` (TFDS builders, image folders, the offline digits), ``pipeline``
  (training and evaluation input) and ``augment`` import them from
  ``tf_import``, the one place that does, and that raises
  :class:`MissingDataExtra` naming the extra when they are not installed;
* ``metadata`` (a dataset's classes and image shape without reading it),
  ``image_files`` (image files preprocessed as evaluation does, with PIL and
  JAX) and ``on_device`` (the uint8 batches' standardisation and
  RandomErasing, inside the jitted steps) need neither.

Everything else (models, steps, ``Experiment`` on metadata, bench, summary,
``jaxattn.load``, predict, explain, the converter, export) runs without
TensorFlow. It reaches the pipeline as ``data.pipeline`` / ``data.sources``
after ``from jaxattn import data``: those modules are imported on first use
(``__getattr__`` below), so a missing TensorFlow is an error only where the
input is actually read.
"""

import dataclasses
import importlib

from jaxattn.errors import BadInputError

EXTRA = "data"
_LAZY_MODULES = ("augment", "image_files", "inception_crop", "metadata",
                 "on_device", "pipeline", "sources", "tf_import")


class DatasetError(BadInputError, ValueError):
  """A dataset name, split or file layout the project cannot use."""


class MissingDataExtra(BadInputError, ImportError):
  """TensorFlow or TFDS is not installed, and the input pipeline needs them."""

  def __init__(self, missing: str):
    super().__init__(
        f"The input pipeline (tf.data, TFDS) needs TensorFlow and TensorFlow "
        f"Datasets, which cannot be imported here ({missing}). Install the "
        f"'{EXTRA}' extra: pip install \"jaxattn[{EXTRA}]\" (from a checkout: "
        f"pip install -e \".[{EXTRA}]\"). Without it jaxattn still builds "
        "models, benchmarks steps on synthetic batches (python -m "
        "jaxattn.bench), prints summaries, loads trained runs "
        "(jaxattn.load), predicts, explains image files, converts and "
        "exports.")
    self.missing = missing


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """Which share of the data this process reads, and its batch size."""

  process_index: int
  process_count: int
  local_batch_size: int


def __getattr__(name):
  # `data.pipeline` etc. on first use (PEP 562): importing this package
  # imports no TensorFlow.
  if name in _LAZY_MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
