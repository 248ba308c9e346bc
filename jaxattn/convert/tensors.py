"""The tensor-layout adapter: every way a Flax array and a PyTorch tensor differ.

Each rule converts in both directions, exactly (transposes, reshapes,
concatenations and splits only, never arithmetic), so Flax -> PyTorch ->
Flax returns identical arrays. A rule takes the Flax arrays of one PyTorch
tensor (usually one; three for a fused qkv; none for ``num_batches_tracked``)
and says which PyTorch shape they make, so shapes are checked before any
data moves.

  COPY               same layout (biases, LayerNorm/BatchNorm vectors, [1,1,D] tokens)
  DENSE              Dense kernel [in,out]        <-> Linear weight [out,in]
  CONV               Conv kernel [*k,in/g,out]    <-> Conv{1,2}d weight [out,in/g,*k]
                     (HWIO <-> OIHW, and (k,I,O) <-> (O,I,k) for 1-D)
  DENSE_AS_CONV1X1   Dense kernel [in,out]        <-> 1x1 Conv2d weight [out,in,1,1]
  TOKENS_LAST_TO_FIRST  [1,T,D]                   <-> [D,T] (seed 002's class token
                     [D,1] and positional embedding [D,N+1])
  MAP_LAST_TO_FIRST  [H,W,D]                      <-> [1,D,H,W] (seed 004's position map)
  QKV_KERNEL         query/key/value kernels [D,D] or [D,H,D/H]
                                                  <-> fused [3D,D], rows q;k;v
  QKV_BIAS           query/key/value biases [D] or [H,D/H] <-> fused [3D]
  HEADS_TO_DENSE     attention output kernel [H,D/H,D] <-> Linear weight [D,D]
  NUM_BATCHES_TRACKED  nothing                    <-> int64 scalar 0 (BatchNorm's
                     counter: written on export, ignored on import)

Head order needs no permutation anywhere: Flax's ``[D, H, D/H]`` and
PyTorch's fused rows both put head h at features ``h*D/H .. (h+1)*D/H - 1``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """One Flax <-> PyTorch tensor-layout rule (both directions).

  ``torch_shape(flax_shapes)`` is the PyTorch shape the Flax arrays make;
  ``to_torch(flax_arrays)`` builds it; ``to_flax(tensor, flax_shapes)``
  splits it back. ``parts`` is how many Flax arrays make one tensor (None:
  any number, all the same shape).
  """

  name: str
  torch_shape: Callable[[Sequence[Shape]], Shape]
  to_torch: Callable[[Sequence[np.ndarray]], np.ndarray]
  to_flax: Callable[[np.ndarray, Sequence[Shape]], list[np.ndarray]]
  parts: int | None = 1

  def __repr__(self) -> str:
    return self.name


def _one(fn):
  return lambda arrays: fn(arrays[0])


def _conv_perm(ndim: int) -> tuple[int, ...]:
  """Flax [*k, I, O] -> PyTorch [O, I, *k]."""
  return (ndim - 1, ndim - 2, *range(ndim - 2))


def _conv_to_flax(x: np.ndarray, shapes):
  del shapes
  return [np.transpose(x, (*range(2, x.ndim), 1, 0))]


def _qkv_kernel_to_torch(arrays):
  d = arrays[0].shape[0]
  return np.concatenate([a.reshape(d, -1) for a in arrays], axis=1).T


def _qkv_kernel_to_flax(x, shapes):
  return [p.reshape(s) for p, s in zip(np.split(x.T, 3, axis=1), shapes)]


def _qkv_bias_to_flax(x, shapes):
  return [p.reshape(s) for p, s in zip(np.split(x, 3), shapes)]


COPY = TensorRule(
    "COPY", lambda s: tuple(s[0]), _one(lambda a: a), lambda x, s: [x])
DENSE = TensorRule(
    "DENSE", lambda s: tuple(s[0][::-1]), _one(lambda a: a.T),
    lambda x, s: [x.T])
CONV = TensorRule(
    "CONV", lambda s: tuple(s[0][i] for i in _conv_perm(len(s[0]))),
    _one(lambda a: np.transpose(a, _conv_perm(a.ndim))), _conv_to_flax)
DENSE_AS_CONV1X1 = TensorRule(
    "DENSE_AS_CONV1X1", lambda s: (s[0][1], s[0][0], 1, 1),
    _one(lambda a: a.T[:, :, None, None]), lambda x, s: [x[:, :, 0, 0].T])
TOKENS_LAST_TO_FIRST = TensorRule(
    "TOKENS_LAST_TO_FIRST", lambda s: (s[0][2], s[0][1]),
    _one(lambda a: a[0].T), lambda x, s: [x.T[None]])
MAP_LAST_TO_FIRST = TensorRule(
    "MAP_LAST_TO_FIRST", lambda s: (1, s[0][2], s[0][0], s[0][1]),
    _one(lambda a: np.transpose(a, (2, 0, 1))[None]),
    lambda x, s: [np.transpose(x[0], (1, 2, 0))])
QKV_KERNEL = TensorRule(
    "QKV_KERNEL",
    lambda s: (sum(math.prod(x[1:]) for x in s), s[0][0]),
    _qkv_kernel_to_torch, _qkv_kernel_to_flax, parts=3)
QKV_BIAS = TensorRule(
    "QKV_BIAS", lambda s: (sum(math.prod(x) for x in s),),
    lambda arrays: np.concatenate([a.reshape(-1) for a in arrays]),
    _qkv_bias_to_flax, parts=3)
HEADS_TO_DENSE = TensorRule(
    "HEADS_TO_DENSE", lambda s: (s[0][-1], math.prod(s[0][:-1])),
    _one(lambda a: a.reshape(-1, a.shape[-1]).T),
    lambda x, s: [x.T.reshape(s[0])])
NUM_BATCHES_TRACKED = TensorRule(
    "NUM_BATCHES_TRACKED", lambda s: (),
    lambda arrays: np.zeros((), np.int64), lambda x, s: [], parts=0)
