"""Input pipeline on grain: deterministic, resumable, process-sharded batches of numpy arrays.

Training batches: every epoch draws a permutation of the split from (seed, epoch); global batch b
of the epoch is permutation[b * global_batch : (b + 1) * global_batch] (the incomplete tail is
dropped), and process p keeps its contiguous slice of it (data.plans). So a run on several
processes sees exactly the global batches of a one-process run, and the number of batches taken
is all a checkpoint needs to resume with the exact next batch. With an unlabelled pool, each batch
also holds `batch['unlabeled']`, the pool's share, read and preprocessed on its own.

The batches are a grain `MapDataset` (batch k -> read its examples with one `__getitems__`, then
decode and augment them) read by a grain iterator: in a background thread (`num_workers=0`) or in
`num_workers` worker processes, each making whole batches, interleaved back in order. Every
stochastic transform draws from its example's own generator (data.plans.ExampleRngs), so the
batches are the same for any number of workers, after any resume, and on any number of processes.

Batch layout: flat `[per_process_batch, ...]` for a single device or sharded jit, and
`[local_devices, per_device_batch, ...]` for pmap (`num_local_devices` set), every part (the
labelled examples, the pool's share) split over the devices on its own.
"""
import ctypes
import dataclasses
import signal
import sys
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Union

import grain
import numpy as np
from absl import flags

from segae_jax import batch as batch_lib
from segae_jax.data.plans import (EVAL_STREAM, TRAIN_STREAM, EvalPlan, ExampleRngs, MixedPlan,
                                  TrainPlan)
from segae_jax.data.sources import DataError, describe_example, read_examples
from segae_jax.errors import RunStopped, UserInputError

Batch = Dict[str, Any]
# (examples, one generator per example) -> batch.
Preprocess = Callable[[Batch, Sequence[np.random.Generator]], Batch]

# Written into every checkpoint's data state; a state without it came from the iterator before
# grain, whose random draws were per batch: resuming from it cannot be exact.
STATE_FORMAT = 'grain-per-example-rng-1'


class InputWorkerDied(RunStopped):
  """A grain worker process exited (killed, out of memory) while making a batch."""
  exit_code = 1


@dataclasses.dataclass(frozen=True)
class LoadBatch:
  """A plan -> the preprocessed batch: read (and so decode) its examples, then `preprocess` with
  one generator per example. Picklable, so grain can run it in worker processes."""
  source: Any
  preprocess: Preprocess
  seed: int
  stream: int

  def __call__(self, plan: Mapping[str, Any]) -> Batch:
    examples = read_examples(self.source, plan['index'])
    return self.preprocess(examples, ExampleRngs(self.seed, self.stream, plan['epoch'],
                                                 plan['position']))


@dataclasses.dataclass(frozen=True)
class LoadMixedBatch:
  """A MixedPlan -> the labelled batch (`labeled`) with the pool's share under 'unlabeled'
  (`unlabeled`, whose preprocess may add views; data.views). Picklable, like LoadBatch."""
  labeled: LoadBatch
  unlabeled: LoadBatch

  def __call__(self, plan: Mapping[str, Any]) -> Batch:
    pool = dict(plan['unlabeled'], epoch=plan['epoch'])
    return dict(self.labeled(plan), unlabeled=self.unlabeled(pool))


def to_devices(batch: Batch, num_local_devices: Optional[int]) -> Batch:
  """Each array [n, ...] of a (nested) batch -> [num_local_devices, n / num_local_devices, ...]
  (pmap's layout; every part split on its own); unchanged when num_local_devices is None."""
  if not num_local_devices:
    return batch
  return {k: (to_devices(v, num_local_devices) if isinstance(v, dict)
              else v.reshape((num_local_devices, -1) + v.shape[1:])) for k, v in batch.items()}


def check_num_workers(value) -> int:
  """Raises UserInputError unless config.data.num_workers is an integer >= 0."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise UserInputError(f'config.data.num_workers={value!r}: expected an integer >= 0 '
                         f'(0 = decode and augment in the training process)')
  return int(value)


def check_unlabeled_per_batch(value, batch_size: int, has_pool: bool,
                              process_count: int = 1) -> int:
  """Raises UserInputError unless config.data.unlabeled_per_batch is an integer in
  [0, batch_size) that is > 0 exactly when there is an unlabelled pool (and with several
  processes, divisible by their number, as the labelled part must be)."""
  key = 'config.data.unlabeled_per_batch'
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise UserInputError(f'{key}={value!r}: expected an integer >= 0')
  if value >= batch_size:
    raise UserInputError(f'{key}={value} must be smaller than the batch size {batch_size} (every '
                         f'step needs labelled examples)')
  if has_pool and value == 0:
    raise UserInputError(f'{key} is 0 but config.data.unlabeled_dir is set: say how many of each '
                         f'batch of {batch_size} are unlabelled')
  if value and not has_pool:
    raise UserInputError(f'{key}={value} needs an unlabelled pool (config.data.unlabeled_dir, or '
                         'config.labeled_fraction < 1)')
  if value % process_count or (batch_size - value) % process_count:
    raise UserInputError(f'{key}={value} and the {batch_size - value} labelled examples of a '
                         f'batch must each divide over the {process_count} processes')
  return int(value)


def grain_iterator(batches: 'grain.MapDataset', num_workers: int):
  """An iterator over a MapDataset of whole batches: one background thread that keeps two
  batches ready, or `num_workers` processes whose outputs grain interleaves back in order."""
  # One reading thread: on a few cores more threads only contend with XLA for them.
  it = batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  if num_workers:
    # grain reads its own absl flags while starting workers; outside an absl app (a notebook,
    # pytest) nobody parsed them, and their defaults are what we want.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=2),
                        worker_init_fn=_die_with_parent)
  return iter(it)


def _die_with_parent(worker_index: int, num_workers: int) -> None:
  """In each worker: ask Linux to kill it when the training process dies (SIGKILL, OOM), so no
  orphaned worker keeps running; elsewhere a no-op."""
  del worker_index, num_workers
  if sys.platform.startswith('linux'):
    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _close(iterator) -> None:
  """Stops a grain iterator's worker processes (only iterators with workers have close())."""
  close = getattr(iterator, 'close', None)
  if close is not None:
    close()


def _next(iterator, describe: Callable[[], str]):
  """next(iterator), with a grain worker's death turned into one line naming the batch."""
  try:
    return next(iterator)
  except DataError as e:
    # grain appends a paragraph about its traceback filtering to the message: keep one line.
    raise DataError(str(e).splitlines()[0]) from e
  except RuntimeError as e:
    if 'terminated unexpectedly' not in str(e):
      raise
    raise InputWorkerDied(f'an input worker process died ({" ".join(str(e).split()[:9])}) '
                          f'while making {describe()}; re-run the same command to resume from '
                          f'the newest checkpoint') from e


class TrainIterator(Iterator[Batch]):
  """Endless, reshuffled-every-epoch training batches with a checkpointable position.

  Args:
    source: object with __len__ and __getitems__(indices) (ArraySource, StreamedSource).
    global_batch_size: examples per step over all processes.
    seed: shuffling and preprocessing randomness.
    preprocess: (examples, generators) -> batch, one np.random.Generator per example, seeded from
      (seed, epoch, position in the epoch); see ExampleRngs.
    process_index, process_count: this process's slice of each global batch.
    num_local_devices: if set, batches are reshaped to [num_local_devices, per_device, ...].
    num_workers: grain worker processes for reading, decoding and augmenting (0: a thread of
      this process). The batches do not depend on it.
    unlabeled, unlabeled_per_batch: an unlabelled pool and how many of each global batch come
      from it (semi-supervised training; see MixedPlan): each batch then holds the pool's share
      as batch['unlabeled'], preprocessed by `unlabeled_preprocess`, and epochs count over
      `source`.
    unlabeled_preprocess: the pool's preprocess (default `preprocess`); its examples hold
      'image' only.
    required: if set, {batch part: the keys it must hold (or {key: kind})}: the first batch
      this iterator yields is checked against the batch contract with them
      (segae_jax.batch.check_training_batch), so a preprocess or view that forgets a key or
      writes a wrong shape fails there, in one line, not inside the compiled step.

  Raises:
    UserInputError: the batch is larger than the split, or a bad num_workers or
      unlabeled_per_batch; BatchError (a UserInputError) from next(): the first batch breaks
      the contract.
  """

  def __init__(self, source, global_batch_size: int, seed: int, preprocess: Preprocess,
               process_index: int = 0, process_count: int = 1,
               num_local_devices: Optional[int] = None, num_workers: int = 0,
               unlabeled=None, unlabeled_per_batch: int = 0,
               unlabeled_preprocess: Optional[Preprocess] = None,
               required: Optional[Mapping[str, batch_lib.Required]] = None):
    num_labeled = global_batch_size - unlabeled_per_batch
    check_unlabeled_per_batch(unlabeled_per_batch, global_batch_size, unlabeled is not None,
                              process_count)
    if num_labeled > len(source):
      raise UserInputError(f'batch size {global_batch_size} exceeds the split size {len(source)}')
    self.global_batch_size = global_batch_size
    self.unlabeled_per_batch = unlabeled_per_batch
    self.seed = seed
    self.num_local_devices = num_local_devices
    self.num_workers = check_num_workers(num_workers)
    self.plan = TrainPlan(len(source), num_labeled, num_labeled // process_count,
                          process_index, seed)
    self.source = source
    self._load = LoadBatch(source, preprocess, seed, TRAIN_STREAM)
    if unlabeled is not None:
      self.plan = MixedPlan(self.plan, len(unlabeled), unlabeled_per_batch, process_count)
      self._load = LoadMixedBatch(self._load, LoadBatch(
          unlabeled, unlabeled_preprocess or preprocess, seed, TRAIN_STREAM))
    self.batches_per_epoch = self.plan.batches_per_epoch
    self._taken = 0
    self._iterator = None
    self._unchecked = required  # Cleared once the first batch passed the contract's check.

  def _start(self):
    """A grain pipeline from batch `_taken` on (grain's range dataset, endless in practice)."""
    self.close()
    batches = grain.MapDataset.range(self._taken, sys.maxsize).map(self.plan).map(self._load)
    self._iterator = grain_iterator(batches, self.num_workers)

  def __next__(self) -> Batch:
    if self._iterator is None:
      self._start()
    batch = _next(self._iterator, lambda: self.describe(self._taken))
    if self._unchecked is not None:
      batch_lib.check_training_batch(batch, self._unchecked)  # Before pmap's reshape.
      self._unchecked = None
    self._taken += 1
    return to_devices(batch, self.num_local_devices)

  def describe(self, k: int) -> str:
    plan = self.plan(k)
    return (f'training batch {k} (epoch {plan["epoch"]}: {len(plan["index"])} examples, the first '
            f'{describe_example(self.source, int(plan["index"][0]))})')

  @property
  def epoch(self) -> int:
    return self._taken // self.batches_per_epoch

  @property
  def batch(self) -> int:
    return self._taken % self.batches_per_epoch

  def get_state(self) -> Dict[str, Union[int, str]]:
    state = {'format': STATE_FORMAT, 'epoch': self.epoch, 'batch': self.batch, 'seed': self.seed,
             'global_batch_size': self.global_batch_size}
    if self.unlabeled_per_batch:
      state['unlabeled_per_batch'] = self.unlabeled_per_batch
    return state

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a get_state() position (with any num_workers).

    Raises:
      UserInputError: the state came from the iterator before grain, or from another seed or
        batch size: the next batches would not be the ones an uninterrupted run sees.
    """
    if state.get('format') != STATE_FORMAT:
      raise UserInputError(
          f'the checkpoint\'s data state {dict(state)} was written by the input pipeline before '
          f'grain (random draws per batch, not per example), so training cannot resume exactly; '
          f'evaluate/predict still read it, or train into a new --workdir')
    saved = (state['seed'], state['global_batch_size'], state.get('unlabeled_per_batch', 0))
    if saved != (self.seed, self.global_batch_size, self.unlabeled_per_batch):
      raise UserInputError(f'data state {dict(state)} was saved with another seed, batch size or '
                           f'unlabeled_per_batch (now seed={self.seed}, batch='
                           f'{self.global_batch_size}, unlabeled_per_batch='
                           f'{self.unlabeled_per_batch})')
    self._taken = int(state['epoch']) * self.batches_per_epoch + int(state['batch'])
    self.close()

  def close(self) -> None:
    """Stops the reading thread or worker processes (a later next() starts them again)."""
    if self._iterator is not None:
      _close(self._iterator)
      self._iterator = None


@dataclasses.dataclass(frozen=True)
class LoadEvalBatch:
  """An EvalPlan -> the preprocessed batch with its 'valid' flags (float32 [batch])."""
  load: LoadBatch

  def __call__(self, plan: Mapping[str, Any]) -> Batch:
    return dict(self.load(plan), valid=plan['valid'])


def eval_batches(source, global_batch_size: int, preprocess: Preprocess, seed: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 num_local_devices: Optional[int] = None,
                 num_examples: Optional[int] = None, num_workers: int = 0) -> Iterator[Batch]:
  """Every example of `source` once, in order, in fixed-size batches (through grain, like the
  training batches).

  The last batch is padded with copies of example 0 and a 'valid' feature (float32 [batch],
  1 = real, 0 = padding) marks what counts, so metrics are exact over the split with one compiled
  shape. Example i's preprocessing draws from its own generator, seeded from (seed, i), and so is
  the same at every evaluation.
  """
  n = len(source) if num_examples is None else min(num_examples, len(source))
  num_batches = -(-n // global_batch_size)
  plan = EvalPlan(n, global_batch_size, process_index, process_count)
  load = LoadEvalBatch(LoadBatch(source, preprocess, seed, EVAL_STREAM))
  iterator = grain_iterator(grain.MapDataset.range(num_batches).map(plan).map(load),
                            check_num_workers(num_workers))
  try:
    for b in range(num_batches):
      yield to_devices(_next(iterator, lambda: f'evaluation batch {b}'), num_local_devices)
  finally:
    _close(iterator)
