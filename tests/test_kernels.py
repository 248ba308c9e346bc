"""jaxattn.models.kernels: the plain ops and the XLA:CPU rewrites compute the
same function, the choice follows the platform a step is compiled for, and a
step lowered for CUDA carries none of the CPU rewrites."""

import functools
import glob
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import configlib, experiment
from jaxattn.configlib import ConfigError
from jaxattn.models import cpu_kernels, kernels
from tests.conftest import REPO

CPU = kernels.Kernels("cpu", "cpu")
PLAIN = kernels.Kernels("plain", "cpu")


def _on(kernel_set, fn):
  """``fn`` jitted with ``kernel_set`` active while it is traced."""
  return jax.jit(kernels.traced_with(kernel_set, fn))


def _assert_close(got, want, rtol=1e-5, atol=1e-5):
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=rtol,
                                 atol=atol), got, want)


# --------------------------------------------------------------------------
# The choice.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("platform,want", [
    ("cpu", "cpu"), ("cuda", "plain"), ("gpu", "plain"), ("rocm", "plain"),
    ("tpu", "plain")])
def test_auto_takes_the_cpu_rewrites_only_for_the_cpu(platform, want):
  chosen = kernels.resolve("auto", platform)
  assert chosen.name == want
  assert kernels.resolve("plain", "cpu").name == "plain"
  assert kernels.resolve("cpu", "cuda").name == "cpu"


def test_an_unknown_kernel_set_is_refused_with_the_choices():
  with pytest.raises(ConfigError, match="config.kernels='fast'.*auto"):
    kernels.resolve("fast", "cpu")


def test_the_choice_holds_while_traced_and_plain_outside():
  seen = []

  def probe(x):
    seen.append(kernels.active())
    return x

  _on(CPU, probe)(1.0)
  assert seen == [CPU]
  assert kernels.active() == kernels.PLAIN


@pytest.mark.parametrize("platform,dtype,head_dim,masked,gpu,want", [
    ("cuda", jnp.bfloat16, 64, False, True, "cudnn"),
    ("gpu", jnp.float16, 128, False, True, "cudnn"),
    ("cuda", jnp.float32, 64, False, True, "xla"),  # cuDNN needs bf16/fp16.
    ("cuda", jnp.bfloat16, 12, False, True, "xla"),  # Not a multiple of 8.
    ("cuda", jnp.bfloat16, 256, False, True, "xla"),  # Above 128.
    ("cuda", jnp.bfloat16, 64, True, True, "xla"),  # Masked.
    ("cuda", jnp.bfloat16, 64, False, False, "xla"),  # Exported, no GPU here.
    ("cpu", jnp.bfloat16, 64, False, True, "xla"),
    ("tpu", jnp.bfloat16, 64, False, True, "xla"),
    (None, jnp.bfloat16, 64, False, True, "xla"),
])
def test_attention_asks_for_cudnn_on_a_gpu_in_bf16_only(platform, dtype,
                                                        head_dim, masked, gpu,
                                                        want):
  assert kernels.attention_implementation(
      platform, dtype, head_dim, masked=masked, gpu_attached=gpu) == want


def test_attention_is_softmax_of_scaled_scores():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 5, 3, 8)), jnp.float32)
             for _ in range(3))
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.25
  want = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
  _assert_close(kernels.attention(q, k, v, scale=0.25), want)


# --------------------------------------------------------------------------
# Each op: the CPU rewrite equals the plain op, values and gradients.
# --------------------------------------------------------------------------


def _value_and_grads(kernel_set, op, *args):
  def loss(*a):
    out = op(*a)
    out = out if isinstance(out, tuple) else (out,)
    # sin: a cotangent that differs everywhere, so every route is checked.
    return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in out), out
  grad = jax.grad(loss, argnums=tuple(range(len(args))), has_aux=True)
  return _on(kernel_set, grad)(*args)


def _arrays(rng, *shapes):
  return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


_OPS = {
    "dense": (kernels.dense, ((4, 6, 24), (24, 40), (40,))),
    "dense_wide_in": (kernels.dense, ((4, 6, 40), (40, 24), (24,))),
    "conv2d_6x6_s2": (functools.partial(kernels.conv2d, strides=(2, 2),
                                        padding=((2, 2), (2, 2))),
                      ((2, 15, 15, 6), (6, 6, 6, 8))),
    "conv2d_1x1_s2": (functools.partial(kernels.conv2d, strides=(2, 2),
                                        padding=((0, 0), (0, 0))),
                      ((2, 8, 8, 6), (1, 1, 6, 8))),
    "conv2d_small_map": (functools.partial(kernels.conv2d, strides=(1, 1),
                                           padding=((1, 1), (1, 1))),
                         ((2, 2, 2, 6), (3, 3, 6, 8))),
    "batch_norm": (functools.partial(kernels.batch_norm, epsilon=1e-5),
                   ((4, 5, 5, 6), (6,), (6,))),
    "conv1d_same": (functools.partial(kernels.conv1d_same, groups=1),
                    ((3, 2, 6), (5, 6, 8))),
    "conv1d_same_depthwise": (functools.partial(kernels.conv1d_same, groups=6),
                              ((3, 2, 6), (250, 1, 12))),
    "gelu": (kernels.gelu, ((4, 33),)),
    "layer_norm": (kernels.layer_norm_no_affine, ((4, 7, 16),)),
    "max_pool": (kernels.max_pool_3x3_s2, ((2, 9, 8, 3),)),
}


@pytest.mark.parametrize("name", sorted(_OPS))
def test_cpu_rewrite_equals_the_plain_op(name):
  op, shapes = _OPS[name]
  args = _arrays(np.random.default_rng(1), *shapes)
  plain_grads, plain_out = _value_and_grads(PLAIN, op, *args)
  cpu_grads, cpu_out = _value_and_grads(CPU, op, *args)
  _assert_close(cpu_out, plain_out, rtol=1e-5, atol=1e-5)
  _assert_close(cpu_grads, plain_grads, rtol=1e-4, atol=1e-4)


def test_map_in_chunks_chunks_only_under_the_cpu_kernels():
  x = jnp.arange(16.0).reshape(16, 1)
  calls = []

  def per_example(rows):
    calls.append(rows.shape[0])
    return rows * 2

  np.testing.assert_array_equal(
      _on(PLAIN, lambda x: kernels.map_in_chunks(per_example, x))(x), x * 2)
  np.testing.assert_array_equal(
      _on(CPU, lambda x: kernels.map_in_chunks(per_example, x))(x), x * 2)
  assert calls == [16, kernels.CPU_CHUNK_SIZE]


# --------------------------------------------------------------------------
# Every model family: same logits and gradients under both kernel sets.
# --------------------------------------------------------------------------


CONFIGS = sorted(os.path.basename(p)[:-3]
                 for p in glob.glob(str(REPO / "configs" / "*.py"))
                 if not p.endswith("__init__.py"))
# One smoke config per model family (and per attention variant).
FAMILIES = ("cifar10_convvit", "cifar10_vit", "cifar10_slresnet50",
            "cifar100_gsop_resnet50", "mnist_se_cnn", "mnist_sa_cnn",
            "cifar10_hybrid")


def _smoke_experiment(name, **overrides):
  config = configlib.load(f"{REPO / 'configs' / name}.py:smoke",
                          [f"{k}={v}" for k, v in overrides.items()])
  return experiment.Experiment(config, data="metadata", mesh_devices=1)


def _loss_and_grads(exp, kernel_set, state, batch):
  mutable = ["batch_stats"] if state.batch_stats else False

  def loss(params):
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    out = exp.model.apply(variables, batch["image"], train=True,
                          mutable=mutable, rngs={"dropout": jax.random.key(0)})
    output, new_vars = out if mutable else (out, {})
    per_example = exp.loss_spec.per_example(output, batch["label"], None)
    return per_example["loss"].mean(), (output, new_vars)

  return _on(kernel_set, jax.grad(loss, has_aux=True))(state.params)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_model_gives_the_same_logits_and_gradients_on_both(name):
  exp = _smoke_experiment(name)
  state = exp.init_state()
  batch = exp.synthetic_batch(16, seed=3)
  plain_grads, plain_out = _loss_and_grads(exp, PLAIN, state, batch)
  cpu_grads, cpu_out = _loss_and_grads(exp, CPU, state, batch)
  _assert_close(cpu_out, plain_out, rtol=1e-4, atol=1e-5)
  # Gradients sum over the batch and every position: the rewrites reorder
  # those sums, so they agree to float32 rounding of the largest entries.
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(plain_grads)
              if g.size)
  _assert_close(cpu_grads, plain_grads, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("train", [False, True])  # True: chunks of 8.
def test_conv_vit_sows_the_same_attention_on_both(train):
  """``cpu_kernels.conv_vit_trunk`` (a Gram matrix per image, chunked in
  training) records each block's attention where the plain modules sow
  theirs."""
  exp = _smoke_experiment("cifar10_convvit")
  state = exp.init_state()
  images = exp.synthetic_batch(16, seed=3)["image"]

  def apply(images):
    return exp.model.apply({"params": state.params}, images, train=train,
                           mutable=["intermediates"])

  plain_logits, plain = _on(PLAIN, apply)(images)
  cpu_logits, cpu = _on(CPU, apply)(images)
  assert jax.tree.structure(cpu) == jax.tree.structure(plain)
  assert len(jax.tree.leaves(plain)) == exp.config.model.depth
  _assert_close(cpu_logits, plain_logits, rtol=1e-4, atol=1e-5)
  _assert_close(cpu, plain, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# The train step exported for CUDA (lowered here, no GPU needed).
# --------------------------------------------------------------------------


def _exported_train_step(exp, platform, step_kernels=None):
  state = jax.eval_shape(exp.init_state)
  batch = jax.eval_shape(lambda: exp.synthetic_batch(exp.config.batch_size))
  fn = exp.make_train_fn(donate=False, step_kernels=step_kernels)
  return jax.export.export(fn, platforms=(platform,))(state, batch)


def _loops_over_arrays(module_text):
  """``stablehlo.while`` loops that carry an array of rank 3 or more (a
  batch's activations: conv_vit's chunks); schedules' scalar searches
  (``jnp.interp``) loop too, over vectors."""
  loops = re.findall(r"stablehlo\.while\(.*\) : (.*)", module_text)
  return [types for types in loops
          if any(t.count("x") >= 3 for t in re.findall(r"tensor<([^>]*)>",
                                                        types))]


def _cpu_constructs(module_text):
  """What only the CPU rewrites put into a program."""
  return {
      "optimization barriers": len(re.findall(r"optimization_barrier",
                                              module_text)),
      "while loops over activations (chunked batches)": len(
          _loops_over_arrays(module_text)),
  }


@pytest.fixture
def cpu_kernels_forbidden(monkeypatch):
  """Every CPU rewrite raises if called: the ones-vector BatchNorm and the
  space-to-depth convolutions leave no name in a program, but a model that
  reached them around the kernel layer fails here."""
  for name in ("dense", "conv2d", "conv1d_same", "batch_norm", "gelu",
               "layer_norm_no_affine", "max_pool_3x3_s2", "map_in_chunks",
               "conv_vit_trunk"):
    def forbidden(*args, _name=name, **kwargs):
      raise AssertionError(f"cpu_kernels.{_name} called for a CUDA step")
    monkeypatch.setattr(cpu_kernels, name, forbidden)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_cuda_train_step_has_none_of_the_cpu_rewrites(name,
                                                        cpu_kernels_forbidden):
  del cpu_kernels_forbidden
  exp = _smoke_experiment(name)
  step_kernels = kernels.resolve(exp.config.kernels, "cuda")
  assert step_kernels.name == "plain"
  exported = _exported_train_step(exp, "cuda", step_kernels)
  assert exported.platforms == ("cuda",)
  found = _cpu_constructs(exported.mlir_module())
  assert not any(found.values()), found


def test_the_same_step_for_the_cpu_has_them():
  """The check above can fail: the CPU lowering of conv_vit has barriers
  (custom gradients) and a chunk loop."""
  exp = _smoke_experiment("cifar10_convvit", batch_size=32)
  assert exp.kernels.name == "cpu"
  found = _cpu_constructs(_exported_train_step(exp, "cpu").mlir_module())
  assert all(found.values()), found
