"""TensorFlow and TFDS, imported here and nowhere else in jaxattn.

The modules of the input pipeline (``sources``, ``pipeline``, ``augment``, and
the feature cache and trainer through them) write
``from jaxattn.data.tf_import import tf, tfds``. Without the ``data`` extra
that import is one error, :class:`jaxattn.data.MissingDataExtra`, naming the
extra to install.

TensorFlow only feeds the host side of the input: hiding the GPUs from it
keeps it from reserving accelerator memory that JAX needs.
"""

from jaxattn.data import MissingDataExtra

try:
  import tensorflow as tf
  import tensorflow_datasets as tfds
except ImportError as e:
  raise MissingDataExtra(str(e)) from e

tf.config.set_visible_devices([], "GPU")

__all__ = ["tf", "tfds"]
