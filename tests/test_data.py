"""The input pipeline on the real Fashion-MNIST files."""
import gzip

import numpy as np
import pytest

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
  with pytest.raises(ValueError, match='another seed or batch size'):
    _iterator(fashion_mnist, seed=9, global_batch_size=25_000).set_state(state)


def test_process_shards_make_up_the_global_batch(fashion_mnist):
  whole = next(_iterator(fashion_mnist))['label']
  parts = [next(_iterator(fashion_mnist, process_index=p, process_count=2))['label']
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_dynamic_binarisation(fashion_mnist):
  raw = next(_iterator(fashion_mnist))['image']
  preprocess = lambda ex, rng: data.scale_images(ex, rng, binarize=True)
  a = next(_iterator(fashion_mnist, preprocess=preprocess))['image']
  assert set(np.unique(a)) <= {0.0, 1.0}
  assert abs(a.mean() - raw.mean()) < 0.01  # Bernoulli(p) keeps the mean intensity.
  it = _iterator(fashion_mnist, preprocess=preprocess, global_batch_size=30_000)
  first = next(it)
  next(it), next(it)  # The third batch starts epoch 1.
  assert it.epoch == 1
  again_same = _iterator(fashion_mnist, preprocess=preprocess, global_batch_size=30_000)
  np.testing.assert_array_equal(next(again_same)['image'], first['image'])


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
