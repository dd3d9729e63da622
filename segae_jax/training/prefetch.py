"""Device prefetch: the next batches are copied to the devices while the current step runs.

The flax examples' `prefetch_to_device` pattern (a queue of `depth` batches already on the
devices; 2 overlaps one step's compute with the next batch's transfer), with the wrapped
iterator's checkpointable position kept exact: `get_state` is the position of the first batch the
loop has not consumed yet, not of the batches read ahead, so a checkpoint resumes where training
stopped, bit for bit.
"""
import collections
from typing import Any, Callable, Deque, Dict, Iterator, Mapping, Tuple

DEFAULT_DEPTH = 2


class DevicePrefetcher(Iterator[Any]):
  """Batches of `iterator` placed on the devices by `put` (a strategy's put_batch), `depth` ahead.

  Args:
    iterator: yields host batches and has get_state() / set_state(state) (data.TrainIterator).
    put: host batch -> batch on the devices (pmap's [devices, per_device, ...] layout or the
      sharded global arrays of jit), called as soon as a batch is read.
    depth: batches kept on the devices (>= 1), each holding device memory of one batch.

  Raises:
    ValueError: depth < 1.
  """

  def __init__(self, iterator, put: Callable[[Any], Any], depth: int = DEFAULT_DEPTH):
    if depth < 1:
      raise ValueError(f'prefetch depth must be >= 1, got {depth}')
    self._iterator, self._put, self._depth = iterator, put, depth
    # (the iterator's state before the batch was read, the batch on the devices).
    self._queue: Deque[Tuple[Dict[str, Any], Any]] = collections.deque()

  def _fill(self) -> None:
    while len(self._queue) < self._depth:
      state = self._iterator.get_state()
      self._queue.append((state, self._put(next(self._iterator))))

  def __next__(self):
    self._fill()
    _, batch = self._queue.popleft()
    self._fill()  # Dispatch the next copy now: it overlaps the step the caller runs on `batch`.
    return batch

  def get_state(self) -> Dict[str, Any]:
    """The wrapped iterator's state at the first batch not yet returned by __next__."""
    return self._queue[0][0] if self._queue else self._iterator.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Drops the batches read ahead and moves the wrapped iterator to `state`."""
    self._queue.clear()
    self._iterator.set_state(state)
