"""A Python without the data extra: TensorFlow, TFDS and TensorBoard (and
what only they bring) cannot be imported, exactly as if not installed.

tests/test_without_tensorflow.py puts this directory first on the PYTHONPATH
of its subprocesses; Python imports ``sitecustomize`` at start-up. The
finder below stands in for the one that searches sys.path and finds nothing
for these names, so ``import tensorflow`` raises ModuleNotFoundError and
``importlib.util.find_spec("tensorflow")`` is None, as on such a host.
"""

import importlib.machinery
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorflow_metadata",
           "tensorflow_io_gcs_filesystem", "tensorboard",
           "tensorboard_data_server", "keras", "tf_keras",
           "importlib_resources")


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, fullname, path=None, target=None):
    if fullname.partition(".")[0] in BLOCKED:
      return None
    return super().find_spec(fullname, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = (
    _PathFinderWithoutTensorFlow)
