"""The input pipeline on the real Fashion-MNIST files."""
import dataclasses
import functools
import gzip
import io

import numpy as np
import pytest
from PIL import Image

from segae_jax import data
from segae_jax.data import fashion_mnist as fm
from segae_jax.errors import UserInputError


def test_real_splits_and_known_first_test_image(fashion_mnist):
  assert len(fashion_mnist.train) == 60_000 and len(fashion_mnist.test) == 10_000
  first = fashion_mnist.test.__getitems__([0])
  assert first['image'].dtype == np.uint8 and first['image'].shape == (1, 28, 28, 1)
  # The first Fashion-MNIST test image is an ankle boot (label 9) whose pixels sum to 33,456.
  assert int(first['image'].sum()) == 33_456 and int(first['label'][0]) == 9
  assert int(fashion_mnist.train.__getitems__([0])['image'].sum()) == 76_247


def test_tfds_data_source_reads_without_tensorflow(tfds_dir):
  import sys
  builder = fm.prepare('', tfds_dir)  # Already prepared: reuses the array_record files.
  source = builder.as_data_source()['test']
  example = source[0]
  assert example['image'].shape == (28, 28, 1) and int(example['image'].sum()) == 33_456
  assert 'tensorflow' not in sys.modules


def test_decoded_splits_are_the_data_source_kept_beside_it(tfds_dir, fashion_mnist):
  """The in-memory splits (written once next to the prepared dataset, loaded by later builds)
  hold exactly what tfds's data source returns, in the same order."""
  import os
  builder = fm.prepare('', tfds_dir)
  assert os.path.isfile(os.path.join(builder.data_dir, fm.DECODED_FILE))
  loaded = fm.decoded_splits(builder)
  sources = builder.as_data_source()
  for split, size in fm.SPLIT_SIZES.items():
    assert len(loaded[split]) == size
    indices = np.random.default_rng(0).choice(size, 50, replace=False).tolist() + [0, size - 1]
    expected = data.stack_examples(sources[split].__getitems__(indices))
    got = loaded[split].__getitems__(indices)
    for key in ('image', 'label'):
      assert got[key].dtype == expected[key].dtype
      np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_array_equal(getattr(fashion_mnist, split).arrays['label'],
                                  loaded[split].arrays['label'])


def _iterator(dataset, **kwargs):
  args = dict(global_batch_size=64, seed=3, preprocess=dataset.preprocess)
  args.update(kwargs)
  return data.TrainIterator(dataset.train, **args)


def test_batches_shapes_dtypes_and_device_layout(fashion_mnist):
  batch = next(_iterator(fashion_mnist))
  assert batch['image'].shape == (64, 28, 28, 1) and batch['image'].dtype == np.float32
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  pmap_batch = next(_iterator(fashion_mnist, num_local_devices=4))
  assert pmap_batch['image'].shape == (4, 16, 28, 28, 1)
  np.testing.assert_array_equal(pmap_batch['image'].reshape(64, 28, 28, 1), batch['image'])


def test_deterministic_and_reshuffled_each_epoch(fashion_mnist):
  a, b = _iterator(fashion_mnist), _iterator(fashion_mnist)
  np.testing.assert_array_equal(next(a)['label'], next(b)['label'])
  other_seed = _iterator(fashion_mnist, seed=4)
  assert not np.array_equal(next(_iterator(fashion_mnist))['label'], next(other_seed)['label'])
  it = _iterator(fashion_mnist, global_batch_size=20_000)
  epoch0 = [next(it)['image'] for _ in range(3)]
  epoch1_first = next(it)['image']
  assert it.epoch == 1
  # Epoch 0 covers 60,000 distinct examples once; epoch 1 starts in another order.
  assert not np.array_equal(epoch0[0], epoch1_first)


def test_resume_continues_with_exact_next_batch(fashion_mnist):
  it = _iterator(fashion_mnist, global_batch_size=25_000)  # 2 batches per epoch.
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)['image'] for _ in range(2)]
  resumed = _iterator(fashion_mnist, global_batch_size=25_000)
  resumed.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(resumed)['image'], e)
  with pytest.raises(UserInputError, match='another seed, batch size'):
    _iterator(fashion_mnist, seed=9, global_batch_size=25_000).set_state(state)
  # A position saved by the iterator before grain: its per-batch draws cannot be continued.
  old = {k: v for k, v in state.items() if k != 'format'}
  with pytest.raises(UserInputError, match=r'^the checkpoint\'s data state .* before grain'):
    _iterator(fashion_mnist, global_batch_size=25_000).set_state(old)


def _ids_source(n):
  """n examples, each holding its own index."""
  return data.ArraySource({'id': np.arange(n)})


def test_each_epoch_is_a_permutation_with_the_tail_dropped():
  """10 examples in batches of 3: epoch e is permutation (seed, e) of the 10, in batches
  perm[0:3], perm[3:6], perm[6:9]; perm[9] is the dropped tail; the next epoch reshuffles."""
  it = data.TrainIterator(_ids_source(10), 3, seed=7, preprocess=lambda ex, rngs: dict(ex))
  epochs = [np.concatenate([next(it)['id'] for _ in range(3)]) for _ in range(2)]
  for e, seen in enumerate(epochs):
    np.testing.assert_array_equal(seen, np.random.default_rng([7, e]).permutation(10)[:9])
    assert len(set(seen.tolist())) == 9
  assert not np.array_equal(epochs[0], epochs[1])
  assert (it.epoch, it.batch) == (2, 0)


def test_process_slices_cover_each_global_batch_exactly(fashion_mnist):
  """4 processes' batches, concatenated, are the one-process global batch, binarisation noise
  included: each example draws from its own generator, wherever it is made."""
  binarised = functools.partial(data.scale_images, binarize=True)
  whole = _iterator(fashion_mnist, preprocess=binarised)
  parts = [_iterator(fashion_mnist, preprocess=binarised, process_index=p, process_count=4)
           for p in range(4)]
  for _ in range(2):
    expected, got = next(whole), [next(p) for p in parts]
    assert all(len(g['label']) == 16 for g in got)
    for key in ('label', 'image', 'clean_image'):
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), expected[key])


def test_example_generators_depend_on_seed_epoch_and_position_only():
  draws = lambda *args: [r.random() for r in data.ExampleRngs(*args)]
  first = draws(0, 1, 0, [5, 6, 7])
  assert draws(0, 1, 0, [7, 6, 5]) == first[::-1]  # Another batch order: the same draws.
  assert len({*first, *draws(1, 1, 0, [5]), *draws(0, 2, 0, [5]), *draws(0, 1, 1, [5])}) == 6
  rngs = data.ExampleRngs(0, 1, 0, [5, 6])
  assert rngs[0] is rngs[-2]  # Kept: transforms one after another continue one stream.
  with pytest.raises(IndexError):
    rngs[2]


def test_cache_values_and_a_streamed_split_gives_the_held_batches(tfds_dir, fashion_mnist,
                                                                  monkeypatch):
  with pytest.raises(UserInputError, match=r"^config.data.cache='yes': expected one of "
                                           r"\('auto', 'memory', 'stream'\)"):
    data.cache_mode('yes')
  assert [data.cache_mode(v) for v in (True, False, 'auto')] == ['memory', 'stream', 'auto']
  source = fm.prepare('', tfds_dir).as_data_source()['test']
  # One example: 784 image bytes + an int64 label; 10,000 of them are 7.92 MB.
  monkeypatch.setattr(data.sources, 'AUTO_CACHE_BYTES', 10_000 * 792)
  assert isinstance(data.hold(source, 'auto'), data.ArraySource)
  monkeypatch.setattr(data.sources, 'AUTO_CACHE_BYTES', 10_000 * 792 - 1)
  assert isinstance(data.hold(source, 'auto'), data.StreamedSource)
  streamed = data.build({'name': 'fashion_mnist', 'tfds_dir': tfds_dir, 'cache': 'stream',
                         'binarize': True})
  assert isinstance(streamed.train, data.StreamedSource)
  held = dataclasses.replace(fashion_mnist, preprocess=streamed.preprocess)
  for a, b in ((_iterator(streamed), _iterator(held)),
               (data.eval_batches(streamed.test, 500, streamed.preprocess, num_examples=1200),
                data.eval_batches(held.test, 500, held.preprocess, num_examples=1200))):
    for _ in range(2):
      x, y = next(a), next(b)
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])


def _png(image: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='PNG')
  return out.getvalue()


class PngSource:
  """Real PNG files in memory, decoded (with Pillow) on each read, as a tfds source decodes."""

  def __init__(self, blobs):
    self.blobs = blobs

  def __len__(self):
    return len(self.blobs)

  def __getitems__(self, indices):
    return [{'image': np.asarray(Image.open(io.BytesIO(self.blobs[i])))[..., None]}
            for i in indices]


def png_source_with_a_cut_file(n=8, cut=5):
  images = np.random.default_rng(0).integers(0, 255, (n, 8, 8), dtype=np.uint8)
  blobs = [_png(image) for image in images]
  blobs[cut] = blobs[cut][:40]  # A file cut short: the header is there, the pixels are not.
  return PngSource(blobs)


def test_an_example_that_cannot_be_decoded_is_named():
  it = data.TrainIterator(png_source_with_a_cut_file(), 4, seed=0,
                          preprocess=functools.partial(data.scale_images, binarize=False))
  with pytest.raises(data.DataError, match=r'^cannot read example 5: \w+Error: [^\n]*$'):
    for _ in range(2):  # Example 5 is in one of the epoch's two batches.
      next(it)


def test_dynamic_binarisation(fashion_mnist):
  preprocess = functools.partial(data.scale_images, binarize=True)
  first_600 = data.ArraySource(fashion_mnist.train.__getitems__(np.arange(600)))
  make = lambda: data.TrainIterator(first_600, 300, seed=3, preprocess=preprocess)
  it = make()
  first = next(it)
  assert set(np.unique(first['image'])) <= {0.0, 1.0}
  # Bernoulli(p) keeps the mean intensity (300 images: the mean of 235,200 draws).
  assert abs(first['image'].mean() - first['clean_image'].mean()) < 0.005
  next(it), next(it)  # The third batch starts epoch 1.
  assert it.epoch == 1
  np.testing.assert_array_equal(next(make())['image'], first['image'])


def test_eval_batches_cover_split_once_with_valid_flags(fashion_mnist):
  batches = list(data.eval_batches(fashion_mnist.test, 3000, fashion_mnist.preprocess))
  assert len(batches) == 4
  assert [int(b['valid'].sum()) for b in batches] == [3000, 3000, 3000, 1000]
  labels = np.concatenate([b['label'][b['valid'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, fashion_mnist.test.__getitems__(np.arange(10_000))['label'])
  sharded = list(data.eval_batches(fashion_mnist.test, 3000, fashion_mnist.preprocess,
                                   num_local_devices=4))
  assert sharded[-1]['image'].shape == (4, 750, 28, 28, 1) and sharded[-1]['valid'].shape == (4, 750)


def test_missing_and_corrupt_files(tmp_path):
  with pytest.raises(UserInputError, match=f'{tmp_path}/nope does not exist; run `make data`'):
    fm.find_idx_dir(str(tmp_path / 'nope'))
  with pytest.raises(UserInputError, match='files missing in .*train-images-idx3-ubyte.gz'):
    fm.find_idx_dir(str(tmp_path))
  bad = tmp_path / 'train-labels-idx1-ubyte.gz'
  bad.write_bytes(b'not gzip')
  with pytest.raises(UserInputError, match='train-labels-idx1-ubyte.gz: cannot read gzip'):
    fm.read_idx(str(bad))
  with gzip.open(bad, 'wb') as f:  # Valid gzip, wrong contents.
    f.write(b'\x00\x00\x08\x01' + (3).to_bytes(4, 'big') + b'\x01\x02\x03')
  with pytest.raises(UserInputError, match='SHA-256 mismatch'):
    fm.read_idx(str(bad))
  other = tmp_path / 'labels.gz'  # Not one of the known files: only the header is checked.
  with gzip.open(other, 'wb') as f:
    f.write(b'\x00\x00\x08\x01' + (5).to_bytes(4, 'big') + b'\x01\x02\x03')
  with pytest.raises(UserInputError, match=r'header says shape \(5,\) but holds 3 values'):
    fm.read_idx(str(other))


def test_a_monitored_pool_carries_its_hidden_masks_and_changes_nothing_else():
  """config.data.monitor_hidden_masks: the pool's masks come along as 'hidden_segmentation',
  moved with their images by the weak view (flips), while every other key of every batch (the
  images, the strong views, the CutMix boxes drawn after them) is the same as without it."""
  from segae_jax.data import views  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  masks = rng.integers(0, 3, (16, 6, 5), dtype=np.uint8)
  source = data.ArraySource({'image': (masks[..., None] * 100).astype(np.uint8),
                             'segmentation': masks})
  full = data.Dataset('hand_made', source, source, (6, 5, 1), 3, ('a', 'b', 'c'),
                      data.scale_images)
  pool_views = {'unlabeled': [views.StrongView(outkey='strong_1'), views.CutMixBox()]}

  def batches(monitor):
    config = {'data': {'augment': {'flip': True}, 'unlabeled_per_batch': 4,
                       'monitor_hidden_masks': monitor},
              'batch_size': 8, 'seed': 0, 'labeled_fraction': 0.5}
    pooled = data.with_labeled_fraction(full, 0.5, 0, as_pool=True, pool_masks=monitor)
    inputs = data.train_inputs(config, pooled, pool_views, None)
    out = [next(inputs) for _ in range(3)]
    inputs.close()
    return out

  plain, monitored = batches(False), batches(True)
  for a, b in zip(plain, monitored):
    pool = b['unlabeled']
    assert 'hidden_segmentation' in pool and 'segmentation' not in pool
    assert 'hidden_segmentation' not in a['unlabeled']
    np.testing.assert_array_equal(np.round(pool['image'][..., 0] * 255 / 100),
                                  pool['hidden_segmentation'])  # Flipped with its image.
    for key in a['unlabeled']:
      np.testing.assert_array_equal(a['unlabeled'][key], pool[key], err_msg=key)
    for key in ('image', 'segmentation'):
      np.testing.assert_array_equal(a[key], b[key])
