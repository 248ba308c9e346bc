"""How far the host runs ahead of the devices, and where results come back.

JAX dispatches a jitted step and returns at once, so a loop can queue many
steps before the first one has finished. A little of that is what keeps an
accelerator busy: while the devices run step N, the host prepares step N+1.
Unbounded, it buys nothing more and costs two things:

* On XLA:CPU with several devices it can abort the run. XLA's CPU client runs
  each device's part of a multi-device program, and the dispatch of the next
  one, on a single pool of max(cores, devices) threads; a dispatch that finds
  its device with 32 computations in flight blocks its pool thread. When the
  oldest program in flight has an all-reduce (every train and eval step), the
  devices that started it wait for a device whose part has no thread left to
  run on, and XLA ends the wait after 40 s with "Termination timeout for all
  reduce" and an abort (``benchmarks/cpu_collectives_soak.py`` reproduces it;
  the stack of every thread is in its docstring). Never letting a device get
  near 32 computations in flight removes the cause, with XLA's own thread
  counts.
* Every metric merge done on the devices is one more small program in that
  queue (a CLU collection merges field by field: ~10 programs per step).

So the project's loops keep at most :data:`DEPTH` steps in flight: when a
loop dispatches one more, the results of the oldest come back to the host
(``jax.device_get``: it waits for that step, the only sync), and metrics are
merged there, in NumPy, where a merge costs nothing. Two steps in flight are
enough to hide the host's own work between steps (fetching the next batch,
putting it on the devices) on a GPU; the benchmarks' timed loops sync every
step anyway.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator

import jax

# Steps a loop may have dispatched beyond the last one whose results are on
# the host. XLA:CPU allows 32 computations in flight per device.
DEPTH = 2


class Window:
  """The device results of the last ``depth`` dispatched steps.

  ``push`` takes a step's results (any pytree of jax Arrays) right after
  its dispatch and returns, as NumPy pytrees and oldest first, the results
  of the steps that fell out of the window (waiting for them if they are
  not done); ``drain`` returns the rest, when the loop needs everything up
  to its last step::

    window = dispatch.Window()
    for batch in batches:
      state, metrics = train_fn(state, batch)
      for done in window.push(metrics):
        total = dispatch.merge(total, done)
    for done in window.drain():
      total = dispatch.merge(total, done)
  """

  def __init__(self, depth: int = DEPTH):
    if depth < 0:
      raise ValueError(f"A dispatch window of depth {depth}: use >= 0.")
    self.depth = depth
    self._in_flight: collections.deque = collections.deque()

  def __len__(self) -> int:
    return len(self._in_flight)

  def push(self, results: Any) -> list[Any]:
    self._in_flight.append(results)
    done = []
    while len(self._in_flight) > self.depth:
      done.append(jax.device_get(self._in_flight.popleft()))
    return done

  def drain(self) -> list[Any]:
    done = [jax.device_get(r) for r in self._in_flight]
    self._in_flight.clear()
    return done


def merge(total: Any, new: Any) -> Any:
  """CLU metric collections (or None, for the first) merged on the host."""
  return new if total is None else total.merge(new)


def merged(results: Iterable[Any], depth: int = DEPTH) -> Any:
  """The merge of ``results``: metric collections returned by steps that
  the iterable dispatches as it is consumed (e.g. a generator over eval
  batches), with at most ``depth`` in flight. None if it is empty."""
  total = None
  for done in host_results(results, depth):
    total = merge(total, done)
  return total


def host_results(results: Iterable[Any], depth: int = DEPTH) -> Iterator[Any]:
  """Each of ``results`` back on the host, in order, with at most ``depth``
  steps in flight (for loops that keep every step's output)."""
  window = Window(depth)
  for result in results:
    yield from window.push(result)
  yield from window.drain()
