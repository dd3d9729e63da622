"""Which examples each batch holds and which random generators they draw from.

A plan maps a batch number to {'index': the examples, 'position': their positions in the epoch
(the counters of their generators), 'epoch'}: the shuffle, the dropped tail and the process slice
of the training batches (TrainPlan; MixedPlan adds an unlabelled pool's share), and the fixed
order of the evaluation batches (EvalPlan). Every stochastic transform draws from its example's
own generator (ExampleRngs), so a batch does not depend on the worker count, a resume or the
number of processes.
"""
import dataclasses
from typing import Any, Dict, Sequence

import numpy as np

from segae_jax.data import batching

# Random streams: training examples and evaluation examples draw from disjoint Philox keys.
TRAIN_STREAM, EVAL_STREAM = 1, 2


class ExampleRngs(Sequence):
  """One np.random.Generator per example of a batch, made on first use and then kept, so the
  transforms applied one after another continue each example's own stream.

  Example i draws from Philox (Salmon et al., SC 2011) with key (seed, stream) and counter
  (0, 0, ids[i], epoch): a counter-based generator, so streams of different examples never
  overlap and each depends on nothing but its (seed, stream, epoch, id).
  """

  def __init__(self, seed: int, stream: int, epoch: int, ids: Sequence[int]):
    self._key = np.array([seed % 2**64, stream], np.uint64)
    self._epoch, self._ids = int(epoch), np.asarray(ids)
    self._made: Dict[int, np.random.Generator] = {}

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = int(i) + len(self) if i < 0 else int(i)
    if not 0 <= i < len(self):
      raise IndexError(f'example {i} of a batch of {len(self)}')
    if i not in self._made:
      counter = np.array([0, 0, int(self._ids[i]), self._epoch], np.uint64)
      self._made[i] = np.random.Generator(np.random.Philox(key=self._key, counter=counter))
    return self._made[i]


def eval_rngs(seed: int, indices: Sequence[int]) -> ExampleRngs:
  """The generators evaluation batches give examples `indices` (eval_batches), for tools that
  preprocess examples themselves and should see what evaluation sees."""
  return ExampleRngs(seed, EVAL_STREAM, 0, indices)


class EpochPermutations:
  """epoch -> the permutation of range(n) seeded from (*seed, epoch); the latest one is kept,
  replaced in one assignment (grain's reading thread and the training thread, describing a batch
  in an error, may both ask)."""

  def __init__(self, n: int, seed: Sequence[int]):
    self.n, self.seed = int(n), tuple(int(s) for s in seed)
    self._cached = (None, None)

  def __call__(self, epoch: int) -> np.ndarray:
    cached_epoch, perm = self._cached
    if cached_epoch != epoch:
      perm = np.random.default_rng([*self.seed, epoch]).permutation(self.n)
      self._cached = (epoch, perm)
    return perm


@dataclasses.dataclass
class TrainPlan:
  """Batch k of this process -> {'index': its examples, 'position': their positions in the
  epoch, 'epoch'}: the shuffle, the dropped tail and the process slice (see the module doc)."""
  num_examples: int
  global_batch_size: int
  local_batch_size: int
  process_index: int
  seed: int

  def __post_init__(self):
    self.batches_per_epoch = self.num_examples // self.global_batch_size
    self._permutation = EpochPermutations(self.num_examples, (self.seed,))

  def __call__(self, k: int) -> Dict[str, Any]:
    epoch, b = divmod(int(k), self.batches_per_epoch)
    perm = self._permutation(epoch)
    start = b * self.global_batch_size + self.process_index * self.local_batch_size
    position = np.arange(start, start + self.local_batch_size)
    return {'index': perm[position], 'position': position, 'epoch': epoch}


# Unlabelled examples' positions (the counter of their generators) start here, far above any
# labelled position, and count on over the whole run: no two examples share a generator.
UNLABELED_POSITION = 1 << 40


@dataclasses.dataclass
class MixedPlan:
  """A TrainPlan plus an unlabelled pool's share: batch k -> the labelled plan of `labeled`
  (global_batch_size - unlabeled_per_batch examples; epochs count over the labelled split) with
  'unlabeled': {'index', 'position'} of unlabeled_per_batch pool examples, taken in order from
  the pool's own stream of permutations (seeded from (seed, its epoch)); each process keeps its
  slice of both parts. The two parts stay apart (data.pipeline.LoadMixedBatch reads them into
  batch and batch['unlabeled']), so every device of every process gets its share of each."""
  labeled: TrainPlan
  num_unlabeled: int
  unlabeled_per_batch: int
  process_count: int

  def __post_init__(self):
    self.batches_per_epoch = self.labeled.batches_per_epoch
    self._permutation = EpochPermutations(self.num_unlabeled, (self.labeled.seed, 0xA11))

  def __call__(self, k: int) -> Dict[str, Any]:
    plan = self.labeled(k)
    local = self.unlabeled_per_batch // self.process_count
    start = int(k) * self.unlabeled_per_batch + self.labeled.process_index * local
    positions = np.arange(start, start + local, dtype=np.int64)
    epochs, within = np.divmod(positions, self.num_unlabeled)
    index = np.array([self._permutation(int(e))[i] for e, i in zip(epochs, within)], np.int64)
    return dict(plan, unlabeled={'index': index, 'position': UNLABELED_POSITION + positions})


@dataclasses.dataclass(frozen=True)
class EvalPlan:
  """Evaluation batch b -> this process's slice of examples [b * global_batch_size, ...) in
  order, the last batch padded (data.batching.chunk), with 'valid' marking the real ones."""
  num_examples: int
  global_batch_size: int
  process_index: int
  process_count: int

  def __call__(self, b: int) -> Dict[str, Any]:
    indices, valid = batching.chunk(self.num_examples, self.global_batch_size, int(b))
    local = self.global_batch_size // self.process_count
    mine = slice(self.process_index * local, (self.process_index + 1) * local)
    return {'index': indices[mine], 'position': indices[mine], 'epoch': 0, 'valid': valid[mine]}
