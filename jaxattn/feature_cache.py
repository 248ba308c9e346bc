"""Frozen-backbone feature cache: run the backbone once, train the head.

Seed 000's ViT-B/8 is frozen and its 1000 logits are all the trainable part
ever sees. With ``config.cache_backbone_features`` the trainer computes them
once per split (evaluation preprocessing, so only configs without train-time
augmentation qualify) and trains on them: the same model, parameters and
step, minus a 86M-parameter forward pass per example per epoch. The cache is
kept in ``WORKDIR/feature_cache/`` so a resumed run does not recompute it.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from jaxattn import parallel
from jaxattn.data import on_device, pipeline, sources
from jaxattn.data.tf_import import tf

CACHE_DIR = "feature_cache"


class FeatureSource(sources.DataSource):
  """This process's cached backbone outputs of the configured splits."""

  def __init__(self, base: sources.DataSource,
               features: dict[str, tuple[np.ndarray, np.ndarray]],
               shard: pipeline.ProcessShard):
    self.name = f"{base.name} (cached backbone features)"
    self._base, self._features, self._shard = base, features, shard

  split_names = property(lambda self: self._base.split_names)
  class_names = property(lambda self: self._base.class_names)
  image_shape = property(lambda self: self._base.image_shape)

  def num_examples(self, split: str) -> int:
    return self._base.num_examples(split)

  def read(self, split, *, process_index=0, process_count=1, decode=True):
    del decode  # Features need no decoding.
    if (process_index, process_count) != (self._shard.process_index,
                                          self._shard.process_count):
      raise ValueError("Cached features belong to process "
                       f"{self._shard.process_index}/{self._shard.process_count}.")
    features, labels = self._features[split]
    return tf.data.Dataset.from_tensor_slices({"image": features,
                                               "label": labels})


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def build(exp, variables, workdir: str):
  """The experiment reading the backbone outputs of every configured split,
  computed once (or loaded from ``WORKDIR/feature_cache/``).

  The backbone runs in evaluation mode through the model interface's
  ``feature_method`` over the evaluation pipeline's images (uint8,
  standardised on the device as the eval step does); the returned
  experiment feeds them to the steps as ``input_kind="features"``.
  """
  config, shard = exp.config, exp.eval_shard
  pixel_stats = dict(pixel_mean=tuple(config.pixel_mean),
                     pixel_std=tuple(config.pixel_std))
  backbone = jax.jit(exp.traced(
      lambda v, images: exp.model.apply(
          v, on_device.prepare_images(images, **pixel_stats),
          method=exp.interface.feature_method)))
  cache_dir = os.path.join(workdir, CACHE_DIR)
  os.makedirs(cache_dir, exist_ok=True)
  features = {}
  for split in {config.train_split, config.val_split, config.test_split} - {""}:
    safe = "".join(c if c.isalnum() else "_" for c in split)
    path = os.path.join(cache_dir, f"{safe}.process{shard.process_index}of"
                        f"{shard.process_count}.npz")
    if os.path.exists(path):
      with np.load(path) as npz:
        features[split] = (npz["features"], npz["labels"])
      logging.info("Backbone features of %s loaded from %s.", split, path)
      continue
    ds, _ = pipeline.create_eval_dataset(exp.source, split, config,
                                         shard=shard, standardize=False)
    outs, labels = [], []
    for batch in pipeline.as_numpy(ds):
      logits = backbone(variables, parallel.global_batch(
          {"image": batch["image"]}, exp.batch_sharding)["image"])
      keep = batch["mask"] > 0
      outs.append(_local_rows(logits)[keep])
      labels.append(batch["label"][keep])
    features[split] = (np.concatenate(outs).astype(np.float32),
                       np.concatenate(labels))
    tmp = path + ".tmp.npz"
    np.savez(tmp, features=features[split][0], labels=features[split][1])
    os.replace(tmp, path)
    logging.info("Backbone features of %s: %s, cached in %s.", split,
                 features[split][0].shape, path)
  return exp.with_features(FeatureSource(exp.source, features, shard))
