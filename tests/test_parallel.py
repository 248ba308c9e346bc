"""State sharding rules: FSDP places shards on different devices and trains
exactly like data parallelism."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxattn import configlib, experiment, optim, parallel, steps

NUM_DEVICES = 4


def _config(rules, parallel_form="jit"):
  c = configlib.base_config()
  c.num_classes, c.num_channels = 10, 1
  c.image_size = (16, 16)
  c.model = dict(name="vit", patch_size=4, hidden_dim=64, depth=1,
                 num_heads=4, mlp_dim=256)
  c.optimizer.update(name="adamw", weight_decay=0.01)
  c.sharding_rules = rules
  c.fsdp_min_size_mb = 0.05  # The 64x256 MLP kernels (64 KiB) are "large".
  c.parallel = parallel_form
  return c


def _train(config, batches):
  """(state, shardings) after a few steps on `batches`."""
  assert jax.device_count() == NUM_DEVICES
  mesh = parallel.create_mesh()
  model = experiment.build_model(config)
  lr_fn = optim.create_learning_rate_fn(config, 10, 10)
  tx = optim.create_optimizer(config, lr_fn)
  exp = experiment.Experiment(config, data="none")
  shardings = exp.state_sharding
  init = jax.jit(functools.partial(steps.create_train_state, model=model,
                                   tx=tx, input_shape=(16, 16, 1)),
                 out_shardings=shardings)
  state = init(jax.random.key_data(jax.random.key(0)))
  step_fn = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx, learning_rate_fn=lr_fn,
      parallel=config.parallel, mesh=mesh),
                    in_shardings=(shardings, parallel.batch_sharded(mesh)),
                    out_shardings=(shardings, parallel.replicated(mesh)))
  for batch in batches:
    state, _ = step_fn(state, parallel.global_batch(
        batch, parallel.batch_sharded(mesh)))
  return state, shardings


def _batches(n=3):
  rng = np.random.default_rng(0)
  return [dict(image=rng.normal(size=(16, 16, 16, 1)).astype(np.float32),
               label=rng.integers(0, 10, size=16)) for _ in range(n)]


def test_fsdp_shards_large_tensors_and_trains_like_data_parallel():
  batches = _batches()
  dp_state, dp_shardings = _train(_config(((".*", "replicate"),)), batches)
  fsdp_state, fsdp_shardings = _train(_config(((".*", "fsdp"),)), batches)
  assert parallel.is_replicated(dp_shardings)

  # The MLP kernel [64, 256] is split along its 256 outputs: each device
  # holds a different quarter, and its Adam moments follow it.
  kernels = {jax.tree_util.keystr(p, simple=True, separator="/"): x
             for p, x in jax.tree_util.tree_flatten_with_path(fsdp_state)[0]}
  [name] = [n for n in kernels if n.startswith("params/") and
            kernels[n].shape == (64, 256)]
  kernel = kernels[name]
  assert kernel.sharding.spec == P(None, parallel.DATA_AXIS)
  shards = kernel.addressable_shards
  assert len({s.device for s in shards}) == NUM_DEVICES
  assert sorted(s.index[1].start for s in shards) == [0, 64, 128, 192]
  assert all(s.data.shape == (64, 64) for s in shards)
  moment_names = [n for n in kernels if n.startswith("opt_state") and
                  n.endswith(name.removeprefix("params/"))]
  assert moment_names and all(
      kernels[n].sharding.spec == P(None, parallel.DATA_AXIS)
      for n in moment_names)
  # Small tensors (biases, LayerNorm scales) and scalars stay replicated.
  assert kernels["step"].sharding.spec == P()
  assert any(x.sharding.spec == P() for n, x in kernels.items()
             if n.startswith("params/") and x.ndim == 1)

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               jax.device_get(dp_state.params),
               jax.device_get(fsdp_state.params))


def test_rules_pick_the_first_match_and_bad_rules_are_explained():
  mesh = parallel.create_mesh()
  big = jax.ShapeDtypeStruct((256, 64), np.float32)
  tree = {"params": {"head": big, "body": big}}
  shardings = parallel.state_shardings(
      tree, mesh, rules=((".*/head", "replicate"), (".*", "fsdp")),
      fsdp_min_size_mb=0)
  assert shardings["params"]["head"].spec == P()
  assert shardings["params"]["body"].spec == P(parallel.DATA_AXIS, None)
  odd = jax.ShapeDtypeStruct((3, 5), np.float32)  # Nothing divides by 4.
  assert parallel.state_shardings(odd, mesh, rules=((".*", "fsdp"),),
                                  fsdp_min_size_mb=0).spec == P()
  with pytest.raises(ValueError, match="strategy one of"):
    parallel.state_shardings(tree, mesh, rules=((".*", "zero3"),))
  with pytest.raises(ValueError, match="regex"):
    parallel.state_shardings(tree, mesh, rules=(("(", "fsdp"),))


def test_pmap_form_refuses_sharded_state():
  config = _config(((".*", "fsdp"),), parallel_form="pmap")
  with pytest.raises(ValueError, match="parallel=jit with FSDP"):
    experiment.Experiment(config, data="none")
