"""The host never runs more than a few steps ahead of the devices.

With several XLA:CPU devices, a host that dispatches far ahead can deadlock
a collective (jaxattn/dispatch.py); these check that the project's train and
eval loops keep at most ``dispatch.DEPTH`` steps in flight and merge their
metrics on the host, to the same numbers as merging on the devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import configlib, dispatch, experiment, train
from tests.conftest import REPO


def test_window_returns_results_in_order_once_they_leave_it():
  window = dispatch.Window(depth=2)
  assert window.push(jnp.array(1)) == []
  assert window.push(jnp.array(2)) == []
  done = window.push(jnp.array(3))
  assert len(done) == 1 and isinstance(done[0], np.ndarray) and done[0] == 1
  assert [int(x) for x in window.push(jnp.array(4))] == [2]
  assert [int(x) for x in window.drain()] == [3, 4] and len(window) == 0
  assert [int(x) for x in dispatch.Window(depth=0).push(jnp.array(5))] == [5]
  with pytest.raises(ValueError, match="depth -1"):
    dispatch.Window(depth=-1)


class _Spy:
  """Wraps a jitted step: before each call, checks that the results of every
  step more than DEPTH calls back came to the host (jax.device_get)."""

  def __init__(self, step_fn, fetched: set[int]):
    self._step_fn, self._fetched = step_fn, fetched
    self.results: list[object] = []
    self.most_in_flight = 0

  def __call__(self, *args):
    in_flight = [r for r in self.results if id(r) not in self._fetched]
    self.most_in_flight = max(self.most_in_flight, len(in_flight))
    assert self.results[len(self.results) - len(in_flight):] == in_flight, (
        "results came back out of order")
    out = self._step_fn(*args)
    self.results.append(out[1] if isinstance(out, tuple) else out)
    return out


@pytest.fixture
def fetched(monkeypatch) -> set[int]:
  """ids of the pytrees brought to the host with jax.device_get."""
  ids, device_get = set(), jax.device_get

  def spy(tree):
    ids.add(id(tree))
    return device_get(tree)

  monkeypatch.setattr(jax, "device_get", spy)
  return ids


def test_training_keeps_at_most_two_steps_in_flight(tmp_path, monkeypatch,
                                                     fetched):
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
  config.num_epochs, config.num_steps = 0, 12
  config.log_every_steps = 100  # Nothing else syncs before the last step.
  spies = []
  make_train_fn = experiment.Experiment.make_train_fn

  def spied_make_train_fn(self, *args, **kwargs):
    spies.append(_Spy(make_train_fn(self, *args, **kwargs), fetched))
    return spies[-1]

  monkeypatch.setattr(experiment.Experiment, "make_train_fn",
                      spied_make_train_fn)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["final_step"] == 12
  steps = [s for s in spies if len(s.results) == 12]
  assert len(steps) == 1
  assert steps[0].most_in_flight == dispatch.DEPTH


def test_evaluation_keeps_at_most_two_steps_in_flight_and_merges_exactly(
    fetched):
  config = configlib.load(f"{REPO}/configs/quickstart.py:smoke")
  exp = experiment.Experiment(config, data="metadata")
  config, state = exp.config, exp.init_state()
  rng = np.random.default_rng(0)
  batches = [dict(image=rng.standard_normal(
      (config.eval_batch_size, *exp.input_shape)).astype(np.float32),
                  label=rng.integers(0, config.num_classes,
                                     config.eval_batch_size),
                  mask=(rng.random(config.eval_batch_size) > 0.2
                        ).astype(np.float32)) for _ in range(7)]
  spy = _Spy(exp.eval_fn, fetched)
  exp.__dict__["eval_fn"] = spy  # The cached jit, wrapped.
  results = exp.evaluate_batches(state, batches)
  assert len(spy.results) == 7 and spy.most_in_flight == dispatch.DEPTH
  # The same sums as merging every batch's metrics on the devices (the
  # host divides them in float64, the devices in float32).
  on_device = spy.results[0]
  for metrics in spy.results[1:]:
    on_device = on_device.merge(metrics)
  on_host = dispatch.merged(spy.results)
  for a, b in zip(jax.tree.leaves(on_host),
                  jax.tree.leaves(jax.device_get(on_device))):
    assert a.dtype == b.dtype and a == b
  assert results["num_examples"] == int(on_device.loss.count)
  for name, value in on_device.compute().items():
    assert results[name] == pytest.approx(float(value), rel=1e-6)
