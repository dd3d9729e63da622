"""Fixed-size batches over a split or an array: one compiled shape, a 'valid' flag per row.

Every example is visited once, in order; the last batch is padded up to the batch size and its
padding rows are flagged 0, so results computed per row are kept (or counted) only where valid is
1. `chunks` gives the indices of each batch (padding rows point at example 0, so a data source
reads a real example there), `pad_batch` pads arrays already in memory with zero rows, and
`map_batched` runs a function over an array in such batches and keeps the real rows.
"""
from typing import Any, Callable, Iterator, Mapping, Tuple, Union

import numpy as np

Arrays = Union[np.ndarray, Mapping[str, np.ndarray]]


def chunks(num_examples: int, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """The batches of examples 0 .. num_examples - 1, in order.

  Yields:
    (indices int64 [batch_size], valid float32 [batch_size]): the examples of one batch and
    1 = real, 0 = padding; padding (only in the last batch) has index 0. E.g. 5 examples in
    batches of 2: indices [0 1], [2 3], [4 0]; valid [1 1], [1 1], [1 0].

  Raises:
    ValueError: batch_size < 1.
  """
  for b in range(-(-num_examples // max(batch_size, 1))):
    yield chunk(num_examples, batch_size, b)


def chunk(num_examples: int, batch_size: int, b: int) -> Tuple[np.ndarray, np.ndarray]:
  """Batch `b` of `chunks(num_examples, batch_size)`, on its own (random access for grain).

  Raises:
    ValueError: batch_size < 1.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  indices = np.zeros(batch_size, np.int64)
  valid = np.zeros(batch_size, np.float32)
  real = np.arange(b * batch_size, min((b + 1) * batch_size, num_examples))
  indices[:len(real)], valid[:len(real)] = real, 1.0
  return indices, valid


def pad_batch(batch: Arrays, batch_size: int) -> Tuple[Arrays, np.ndarray]:
  """Pads an array [n, ...] (or each array of a dict, all with n rows) with zero rows to
  [batch_size, ...].

  Returns:
    (the padded array or dict, valid float32 [batch_size]: 1 for the n real rows, then 0).

  Raises:
    ValueError: more than batch_size rows, or arrays of a dict with different row counts.
  """
  arrays = batch if isinstance(batch, Mapping) else {None: batch}
  counts = {len(v) for v in arrays.values()}
  if len(counts) != 1 or max(counts) > batch_size:
    raise ValueError(f'cannot pad rows {sorted(counts)} to one batch of {batch_size}')
  n = counts.pop()
  padded = {k: np.concatenate([np.asarray(v), np.zeros((batch_size - n,) + np.shape(v)[1:],
                                                          np.asarray(v).dtype)])
            for k, v in arrays.items()}
  valid = (np.arange(batch_size) < n).astype(np.float32)
  return (padded if isinstance(batch, Mapping) else padded[None]), valid


def map_batched(fn: Callable[[np.ndarray], Any], x: np.ndarray, batch_size: int) -> np.ndarray:
  """fn over x [n, ...] in batches of min(batch_size, n) rows (the last one padded, so fn sees one
  shape and compiles once); returns the real rows of fn's outputs, concatenated: [n, ...].

  fn must compute each row from that row alone (as inference does), so padding changes nothing.
  """
  x = np.asarray(x)
  size = min(batch_size, len(x))
  out = []
  for indices, valid in chunks(len(x), size):
    batch, _ = pad_batch(x[indices[valid > 0]], size)
    out.append(np.asarray(fn(batch))[valid > 0])
  return np.concatenate(out)
