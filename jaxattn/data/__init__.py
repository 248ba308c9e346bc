"""Input pipelines (tf.data + TFDS).

TensorFlow only feeds the host side of the input here; hiding the GPUs from it
keeps it from reserving accelerator memory that JAX needs.
"""

import tensorflow as tf

tf.config.set_visible_devices([], "GPU")
