"""Random-access sources of examples: splits held in memory or streamed from disk, a subset of
a split, a split with one more per-example feature, and reading a batch of examples with errors
that name the example's file.

A source is any object with `__len__` and `__getitems__(indices) -> {feature: stacked array}`
(a tfds data source returns a list of per-example dicts; `stack_examples` stacks them).
"""
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from segae_jax.errors import UserInputError

Batch = Dict[str, np.ndarray]
# config.data.cache = 'auto' holds a split in memory when its decoded arrays take at most this.
# Every dataset of this repository's configs fits (the scenes: 82 MB); 2,000 RGB images of 256²
# (524 MB) stream.
AUTO_CACHE_BYTES = 256 << 20
CACHE_VALUES = ('auto', 'memory', 'stream')


class DataError(UserInputError):
  """An example that cannot be read or decoded; the message names its index and file."""


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


class Subset:
  """Examples `indices` of `source`, renumbered 0 .. len(indices) - 1, keeping only `keys` if
  given (e.g. the images of a split whose masks a run must not see)."""

  def __init__(self, source, indices: Sequence[int], keys: Optional[Sequence[str]] = None):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.keys = None if keys is None else tuple(keys)

  def __len__(self) -> int:
    return len(self.indices)

  def describe(self, index: int) -> str:
    return describe_example(self.source, int(self.indices[index]))

  def __getitems__(self, indices: Sequence[int]) -> Batch:
    batch = stack_examples(self.source.__getitems__(self.indices[np.asarray(indices, np.int64)]))
    return batch if self.keys is None else {k: batch[k] for k in self.keys}


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
