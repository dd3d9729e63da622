"""Input pipeline: deterministic, resumable, process-sharded batches of numpy arrays.

Training batches: every epoch draws a permutation of the split from (seed, epoch); global batch b
of the epoch is permutation[b * global_batch : (b + 1) * global_batch] (the incomplete tail is
dropped), and process p keeps its contiguous slice of it. So a run on several processes sees
exactly the global batches of a one-process run, and the iterator's position (epoch, batch) is all
a checkpoint needs to resume with the exact next batch.

Batch layout: flat `[per_process_batch, ...]` for a single device or sharded jit, and
`[local_devices, per_device_batch, ...]` for pmap (`num_local_devices` set).
"""
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np

from segae_jax.data import batching

Batch = Dict[str, np.ndarray]
Preprocess = Callable[[Batch, np.random.Generator], Batch]


class ArraySource:
  """A split held in memory: {feature: [num_examples, ...] array}, read by index lists."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f'features have different lengths: {lengths}')
    self.arrays = dict(arrays)
    self._len = lengths.pop()

  @classmethod
  def from_data_source(cls, source, chunk: int = 10_000,
                       keys: Optional[Sequence[str]] = None) -> 'ArraySource':
    """Reads a whole tfds data source (random access, numpy dicts) into memory once, keeping
    only `keys` if given (e.g. the fixed-shape features when others vary in length)."""
    parts = []
    for start in range(0, len(source), chunk):
      examples = source.__getitems__(range(start, min(start + chunk, len(source))))
      if keys is not None and not isinstance(examples, dict):
        examples = [{k: e[k] for k in keys} for e in examples]
      parts.append(stack_examples(examples))
    return cls({k: np.concatenate([p[k] for p in parts]) for k in (keys or parts[0])})

  def __len__(self) -> int:
    return self._len

  def __getitems__(self, indices: Sequence[int]) -> Batch:
    indices = np.asarray(indices)
    return {k: v[indices] for k, v in self.arrays.items()}


def stack_examples(examples) -> Batch:
  """A list of per-example dicts (what tfds data sources return) -> dict of stacked arrays."""
  if isinstance(examples, dict):
    return examples
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def _read(source, indices) -> Batch:
  return stack_examples(source.__getitems__([int(i) for i in indices]))


def _to_devices(batch: Batch, num_local_devices: Optional[int]) -> Batch:
  if not num_local_devices:
    return batch
  return {k: v.reshape((num_local_devices, -1) + v.shape[1:]) for k, v in batch.items()}


class TrainIterator(Iterator[Batch]):
  """Endless, reshuffled-every-epoch training batches with a checkpointable position.

  Args:
    source: object with __len__ and __getitems__(indices) (ArraySource or a tfds data source).
    global_batch_size: examples per step over all processes.
    seed: shuffling and preprocessing randomness.
    preprocess: (examples, np.random.Generator) -> batch; the generator is seeded from
      (seed, epoch, batch, process) so stochastic preprocessing is reproducible on resume.
    process_index, process_count: this process's slice of each global batch.
    num_local_devices: if set, batches are reshaped to [num_local_devices, per_device, ...].
  """

  def __init__(self, source, global_batch_size: int, seed: int, preprocess: Preprocess,
               process_index: int = 0, process_count: int = 1,
               num_local_devices: Optional[int] = None):
    if global_batch_size > len(source):
      raise ValueError(f'batch size {global_batch_size} exceeds the split size {len(source)}')
    self.source = source
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // process_count
    self.seed = seed
    self.preprocess = preprocess
    self.process_index = process_index
    self.num_local_devices = num_local_devices
    self.batches_per_epoch = len(source) // global_batch_size
    self.epoch = 0
    self.batch = 0
    self._perm_epoch = None
    self._perm = None

  def _permutation(self) -> np.ndarray:
    if self._perm_epoch != self.epoch:
      self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))
      self._perm_epoch = self.epoch
    return self._perm

  def __next__(self) -> Batch:
    start = self.batch * self.global_batch_size + self.process_index * self.local_batch_size
    indices = self._permutation()[start:start + self.local_batch_size]
    # Seeded per process too: processes must not share noise. Stochastic preprocessing (dynamic
    # binarisation) therefore matches a one-process run only for the same process count.
    rng = np.random.default_rng([self.seed, self.epoch, self.batch, self.process_index, 1])
    batch = self.preprocess(_read(self.source, indices), rng)
    self.batch += 1
    if self.batch == self.batches_per_epoch:
      self.epoch, self.batch = self.epoch + 1, 0
    return _to_devices(batch, self.num_local_devices)

  def get_state(self) -> Dict[str, int]:
    return {'epoch': self.epoch, 'batch': self.batch, 'seed': self.seed,
            'global_batch_size': self.global_batch_size}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if (state['seed'], state['global_batch_size']) != (self.seed, self.global_batch_size):
      raise ValueError(f'data state {dict(state)} was saved with another seed or batch size '
                       f'(now seed={self.seed}, batch={self.global_batch_size})')
    self.epoch, self.batch = int(state['epoch']), int(state['batch'])


def eval_batches(source, global_batch_size: int, preprocess: Preprocess, seed: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 num_local_devices: Optional[int] = None,
                 num_examples: Optional[int] = None) -> Iterator[Batch]:
  """Every example of `source` once, in order, in fixed-size batches.

  The last batch is padded with copies of example 0 and a 'valid' feature (float32 [batch],
  1 = real, 0 = padding) marks what counts, so metrics are exact over the split with one compiled
  shape. Preprocessing randomness is seeded from (seed, batch) and so the same at every evaluation.
  """
  n = len(source) if num_examples is None else min(num_examples, len(source))
  local = global_batch_size // process_count
  mine = slice(process_index * local, (process_index + 1) * local)
  for b, (indices, valid) in enumerate(batching.chunks(n, global_batch_size)):
    batch = preprocess(_read(source, indices[mine]),
                       np.random.default_rng([seed, b, process_index, 2]))
    batch['valid'] = valid[mine]
    yield _to_devices(batch, num_local_devices)
