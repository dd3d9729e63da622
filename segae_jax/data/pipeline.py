"""Input pipeline on grain: deterministic, resumable, process-sharded batches of numpy arrays.

Training batches: every epoch draws a permutation of the split from (seed, epoch); global batch b
of the epoch is permutation[b * global_batch : (b + 1) * global_batch] (the incomplete tail is
dropped), and process p keeps its contiguous slice of it. So a run on several processes sees
exactly the global batches of a one-process run, and the number of batches taken is all a
checkpoint needs to resume with the exact next batch.

The batches are a grain `MapDataset` (batch k -> read its examples with one `__getitems__`, then
decode and augment them) read by a grain iterator: in a background thread (`num_workers=0`) or in
`num_workers` worker processes, each making whole batches, interleaved back in order. Every
stochastic transform draws from its example's own generator, seeded from (seed, epoch, position
of the example in the epoch), so the batches are the same for any number of workers, after any
resume, and on any number of processes.

Batch layout: flat `[per_process_batch, ...]` for a single device or sharded jit, and
`[local_devices, per_device_batch, ...]` for pmap (`num_local_devices` set).
"""
import ctypes
import dataclasses
import signal
import sys
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Union

import grain
import numpy as np
from absl import flags

from segae_jax.data import batching
from segae_jax.errors import RunStopped, UserInputError

Batch = Dict[str, np.ndarray]
# (examples, one generator per example) -> batch.
Preprocess = Callable[[Batch, Sequence[np.random.Generator]], Batch]

# Written into every checkpoint's data state; a state without it came from the iterator before
# grain, whose random draws were per batch: resuming from it cannot be exact.
STATE_FORMAT = 'grain-per-example-rng-1'
# Random streams: training examples and evaluation examples draw from disjoint Philox keys.
TRAIN_STREAM, EVAL_STREAM = 1, 2
# config.data.cache = 'auto' holds a split in memory when its decoded arrays take at most this.
# Every dataset of this repository's configs fits (the scenes: 82 MB); 2,000 RGB images of 256²
# (524 MB) stream.
AUTO_CACHE_BYTES = 256 << 20
CACHE_VALUES = ('auto', 'memory', 'stream')


class DataError(UserInputError):
  """An example that cannot be read or decoded; the message names its index and file."""


class InputWorkerDied(RunStopped):
  """A grain worker process exited (killed, out of memory) while making a batch."""
  exit_code = 1


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
    streamed = StreamedSource(source, keys)
    parts = [streamed.__getitems__(range(start, min(start + chunk, len(source))))
             for start in range(0, len(source), chunk)]
    return cls(concat_batches(parts))

  def __len__(self) -> int:
    return self._len

  def __getitems__(self, indices: Sequence[int]) -> Batch:
    indices = np.asarray(indices)
    return {k: v[indices] for k, v in self.arrays.items()}


class StreamedSource:
  """A split read from disk on demand: a tfds data source (or any random-access source of
  per-example dicts), stacked into batches, keeping only `keys` if given. Memory does not grow
  with the number of examples; decoding happens in whichever process reads."""

  def __init__(self, source, keys: Optional[Sequence[str]] = None):
    self.source = source
    self.keys = None if keys is None else tuple(keys)

  def __len__(self) -> int:
    return len(self.source)

  def describe(self, index: int) -> str:
    return describe_example(self.source, index)

  def __getitems__(self, indices: Sequence[int]) -> Batch:
    examples = self.source.__getitems__([int(i) for i in indices])
    if self.keys is not None and not isinstance(examples, dict):
      examples = [{k: e[k] for k in self.keys} for e in examples]
    return stack_examples(examples)


class WithFeature:
  """A source plus one more per-example feature held in memory (e.g. the 'labeled' flags)."""

  def __init__(self, source, name: str, values: np.ndarray):
    if len(values) != len(source):
      raise ValueError(f'{name}: {len(values)} values for {len(source)} examples')
    self.source, self.name, self.values = source, name, values

  def __len__(self) -> int:
    return len(self.source)

  def describe(self, index: int) -> str:
    return describe_example(self.source, index)

  def __getitems__(self, indices: Sequence[int]) -> Batch:
    return {**self.source.__getitems__(indices), self.name: self.values[np.asarray(indices)]}


def cache_mode(value) -> str:
  """config.data.cache -> 'auto' | 'memory' | 'stream'; True and False (the field's values
  before the streaming pipeline, still in older runs' config.json) mean 'memory' and 'stream'.

  Raises:
    UserInputError: any other value.
  """
  if value is True or value is False:
    return 'memory' if value else 'stream'
  if value in CACHE_VALUES:
    return value
  raise UserInputError(f'config.data.cache={value!r}: expected one of {CACHE_VALUES!r} '
                       f'(\'auto\' holds a split in memory up to {AUTO_CACHE_BYTES >> 20} MiB)')


def hold(source, cache, keys: Optional[Sequence[str]] = None):
  """The split `source` (a tfds data source) held in memory as an ArraySource ('memory'), or
  streamed from disk as a StreamedSource ('stream'), as config.data.cache says; 'auto' holds it
  when its decoded arrays (the size of one example times their number) take at most
  AUTO_CACHE_BYTES.

  Raises:
    UserInputError: a bad cache value.
  """
  mode = cache_mode(cache)
  streamed = StreamedSource(source, keys)
  if mode == 'auto' and len(source):
    example = streamed.__getitems__([0])
    nbytes = sum(np.asarray(v[0]).nbytes for v in example.values()) * len(source)
    mode = 'memory' if nbytes <= AUTO_CACHE_BYTES else 'stream'
  return ArraySource.from_data_source(source, keys=keys) if mode == 'memory' else streamed


def unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 pixel / 255 in [0, 1], in one pass (the same values as
  `images.astype(np.float32) / 255`, without its float32 temporary)."""
  return np.divide(images, np.float32(255), dtype=np.float32)


def _stack(values: Sequence[np.ndarray]) -> np.ndarray:
  """Arrays of one shape -> one stacked array; of several shapes (images at their own sizes) ->
  a 1-D object array holding them (data.sizing brings them to one size)."""
  arrays = [np.asarray(v) for v in values]
  if all(a.shape == arrays[0].shape for a in arrays):
    return np.stack(arrays)
  ragged = np.empty(len(arrays), object)
  for i, a in enumerate(arrays):
    ragged[i] = a
  return ragged


def stack_examples(examples) -> Batch:
  """A list of per-example dicts (what tfds data sources return) -> dict of stacked arrays
  (object arrays for features whose shapes differ between examples)."""
  if isinstance(examples, dict):
    return examples
  return {k: _stack([e[k] for e in examples]) for k in examples[0]}


def concat_batches(parts: Sequence[Batch]) -> Batch:
  """Batches of one split, joined in order; a feature ragged in any part is ragged in all."""
  out = {}
  for k in parts[0]:
    if any(p[k].dtype == object for p in parts) or len({p[k].shape[1:] for p in parts}) > 1:
      out[k] = _stack([a for p in parts for a in p[k]])
    else:
      out[k] = np.concatenate([p[k] for p in parts])
  return out


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


def describe_example(source, index: int) -> str:
  """'example i' and the file it is in, for error messages: the source's own `describe(index)`
  if it has one, else for a tfds data source its split's shard file (from the split's public
  shard lengths), else just the index."""
  describe = getattr(source, 'describe', None)
  if describe is not None:
    return describe(index)
  info, split = getattr(source, 'dataset_info', None), getattr(source, 'split', None)
  if info is not None and isinstance(split, str) and split in info.splits:
    split_info = info.splits[split]
    shard = int(np.searchsorted(np.cumsum(split_info.shard_lengths), index, side='right'))
    files = split_info.filepaths
    if shard < len(files):
      return f'example {index} of split {split!r} ({files[shard]})'
  return f'example {index}'


def read_examples(source, indices: Sequence[int]) -> Batch:
  """`source.__getitems__(indices)` stacked; a read or decode failure becomes a DataError naming
  the first example of the batch and its file."""
  try:
    return stack_examples(source.__getitems__([int(i) for i in indices]))
  except Exception as e:  # pylint: disable=broad-except
    # Decoders raise many types (OSError, ValueError, PIL's, array_record's); all mean this
    # batch cannot be made. Find the example at fault so the message can name it.
    culprit = int(indices[0])
    for i in indices:
      try:
        source.__getitems__([int(i)])
      except Exception:  # pylint: disable=broad-except
        culprit = int(i)
        break
    detail = ' '.join(f'{type(e).__name__}: {e}'.split())
    raise DataError(f'cannot read {describe_example(source, culprit)}: {detail}') from e


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


class Pools:
  """A labelled split and an unlabelled pool read as one source with a 'labeled' flag:
  indices [0, n) are the labelled examples (flag 1), [n, n + m) the unlabelled ones (flag 0,
  'segmentation' all zeros, which the segmentation terms never see: they weight by the flag)."""

  def __init__(self, labeled, unlabeled):
    self.labeled, self.unlabeled = labeled, unlabeled
    self.num_labeled = len(labeled)

  def __len__(self) -> int:
    return self.num_labeled + len(self.unlabeled)

  def describe(self, index: int) -> str:
    if index < self.num_labeled:
      return describe_example(self.labeled, index)
    return 'unlabeled ' + describe_example(self.unlabeled, index - self.num_labeled)

  def __getitems__(self, indices: Sequence[int]) -> Batch:
    indices = np.asarray(indices, np.int64)
    is_labeled = indices < self.num_labeled
    parts, order, mask_channels = [], [], ()
    if is_labeled.any():
      part = stack_examples(self.labeled.__getitems__(indices[is_labeled]))
      parts.append(dict(part, labeled=np.ones(int(is_labeled.sum()), np.float32)))
      order.append(np.flatnonzero(is_labeled))
      # Zero masks shaped like the labelled ones ([h, w] or [h, w, 1]): examples of one size then
      # stay one stacked array.
      mask_channels = np.asarray(part['segmentation'][0]).shape[2:]
    if not is_labeled.all():
      part = stack_examples(self.unlabeled.__getitems__(indices[~is_labeled] - self.num_labeled))
      masks = _stack([np.zeros(image.shape[:2] + mask_channels, np.uint8)
                      for image in part['image']])
      parts.append(dict(part, segmentation=masks,
                        labeled=np.zeros(int((~is_labeled).sum()), np.float32)))
      order.append(np.flatnonzero(~is_labeled))
    batch = concat_batches(parts)
    inverse = np.argsort(np.concatenate(order), kind='stable')
    return {k: v[inverse] for k, v in batch.items()}


@dataclasses.dataclass
class MixedPlan:
  """TrainPlan for Pools: each global batch is `labeled` 's batch (global_batch_size -
  unlabeled_per_batch labelled examples; epochs count over the labelled pool) plus
  unlabeled_per_batch unlabelled ones, taken in order from the pool's own stream of
  permutations (seeded from (seed, its epoch)); each process keeps its slice of both parts."""
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
    return {'index': np.concatenate([plan['index'], index + self.labeled.num_examples]),
            'position': np.concatenate([plan['position'], UNLABELED_POSITION + positions]),
            'epoch': plan['epoch']}


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


def _to_devices(batch: Batch, num_local_devices: Optional[int]) -> Batch:
  if not num_local_devices:
    return batch
  return {k: v.reshape((num_local_devices, -1) + v.shape[1:]) for k, v in batch.items()}


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
    raise UserInputError(f'{key}={value} needs an unlabelled pool (config.data.unlabeled_dir)')
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
      from it (semi-supervised training; see Pools and MixedPlan): every example then carries a
      'labeled' flag, float32 [batch], and epochs count over `source`.

  Raises:
    UserInputError: the batch is larger than the split, or a bad num_workers or
      unlabeled_per_batch.
  """

  def __init__(self, source, global_batch_size: int, seed: int, preprocess: Preprocess,
               process_index: int = 0, process_count: int = 1,
               num_local_devices: Optional[int] = None, num_workers: int = 0,
               unlabeled=None, unlabeled_per_batch: int = 0):
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
    if unlabeled is not None:
      self.plan = MixedPlan(self.plan, len(unlabeled), unlabeled_per_batch, process_count)
      source = Pools(source, unlabeled)
    self.source = source
    self.batches_per_epoch = self.plan.batches_per_epoch
    self._load = LoadBatch(source, preprocess, seed, TRAIN_STREAM)
    self._taken = 0
    self._iterator = None

  def _start(self):
    """A grain pipeline from batch `_taken` on (grain's range dataset, endless in practice)."""
    self.close()
    batches = grain.MapDataset.range(self._taken, sys.maxsize).map(self.plan).map(self._load)
    self._iterator = grain_iterator(batches, self.num_workers)

  def __next__(self) -> Batch:
    if self._iterator is None:
      self._start()
    batch = _next(self._iterator, lambda: self.describe(self._taken))
    self._taken += 1
    return _to_devices(batch, self.num_local_devices)

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
class _EvalPlan:
  num_examples: int
  global_batch_size: int
  process_index: int
  process_count: int

  def __call__(self, b: int) -> Dict[str, Any]:
    indices, valid = batching.chunk(self.num_examples, self.global_batch_size, int(b))
    local = self.global_batch_size // self.process_count
    mine = slice(self.process_index * local, (self.process_index + 1) * local)
    return {'index': indices[mine], 'position': indices[mine], 'epoch': 0, 'valid': valid[mine]}


@dataclasses.dataclass(frozen=True)
class _LoadEvalBatch:
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
  plan = _EvalPlan(n, global_batch_size, process_index, process_count)
  load = _LoadEvalBatch(LoadBatch(source, preprocess, seed, EVAL_STREAM))
  iterator = grain_iterator(grain.MapDataset.range(num_batches).map(plan).map(load),
                            check_num_workers(num_workers))
  try:
    for b in range(num_batches):
      yield _to_devices(_next(iterator, lambda: f'evaluation batch {b}'), num_local_devices)
  finally:
    _close(iterator)
