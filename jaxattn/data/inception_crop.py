"""The fast random crop: TF's own Inception crop, decoding only the window.

``config.augment.crop_impl = "tf_fast"`` (the default for configs that do
not choose): the crop box comes from
``tf.image.stateless_sample_distorted_bounding_box`` (area range
``config.augment.crop_scale``, aspect ratio range ``crop_ratio``, 100
attempts, the whole image when none fits), a JPEG is decoded only inside it
(``tf.image.decode_and_crop_jpeg``), and the crop is resized bilinearly
without antialiasing (``tf.image.resize``) and rounded to uint8. That is
seed 000's ``make_dataset`` (sayakpaul's ViT fine-tuning notebook), and
per image it costs a fraction of a full decode plus the Pillow-exact resize
of ``augment.resized_crop`` (``crop_impl = "pillow_exact"``, bit-exact with
torchvision, which the seeds that trained with torchvision keep).

Each image is cropped on its own, in a tf.data map, from its own stateless
seed: the crop depends on the seed alone, whatever the parallelism.
"""

from __future__ import annotations

from jaxattn.data.tf_import import tf

# TF's default and seed 000's notebook: tries before the whole image is used.
MAX_ATTEMPTS = 100


def sample_box(seed: tf.Tensor, height, width, *,
               scale: tuple[float, float], ratio: tuple[float, float]
               ) -> tf.Tensor:
  """int32 [4] (top, left, height, width) of one image's crop."""
  shape = tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32),
                    tf.constant(1, tf.int32)])
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, whole, seed=seed, min_object_covered=0.0,
      aspect_ratio_range=ratio, area_range=scale, max_attempts=MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return tf.concat([begin[:2], size[:2]], axis=0)


def _resize_to_uint8(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
  """Bilinear, not antialiased (as the seed's notebooks), rounded to uint8."""
  resized = tf.image.resize(image, size, method="bilinear", antialias=False)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def crop_decoded(image: tf.Tensor, seed: tf.Tensor, size: tuple[int, int], *,
                 scale: tuple[float, float], ratio: tuple[float, float]
                 ) -> tf.Tensor:
  """uint8 [H, W, C] -> uint8 [*size, C]: a random crop of decoded pixels."""
  shape = tf.shape(image)
  top, left, height, width = tf.unstack(
      sample_box(seed, shape[0], shape[1], scale=scale, ratio=ratio))
  window = image[top:top + height, left:left + width]
  return tf.ensure_shape(_resize_to_uint8(window, size),
                         [*size, image.shape[-1]])


def crop_encoded(data: tf.Tensor, seed: tf.Tensor, size: tuple[int, int], *,
                 channels: int, scale: tuple[float, float],
                 ratio: tuple[float, float]) -> tf.Tensor:
  """Image file bytes -> uint8 [*size, channels], the crop of `crop_decoded`
  (same box for the same seed and image size). A JPEG is decoded only
  inside the box; other formats are decoded whole, then cropped."""

  def jpeg():
    shape = tf.image.extract_jpeg_shape(data)
    box = sample_box(seed, shape[0], shape[1], scale=scale, ratio=ratio)
    window = tf.image.decode_and_crop_jpeg(data, box, channels=channels)
    return _resize_to_uint8(window, size)

  def other():
    image = tf.io.decode_image(data, channels=channels,
                               expand_animations=False)
    return crop_decoded(tf.ensure_shape(image, [None, None, channels]), seed,
                        size, scale=scale, ratio=ratio)

  return tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), jpeg, other),
                         [*size, channels])
