"""oxford_iiit_pet through tfds's stock builder, without TensorFlow.

Two stand-ins for the real (download-only) data:
  - a prepared copy written here: real JPEG/PNG files serialized with the stock builder's own
    features into array_record, read through tfds's real decoding path;
  - tfds.testing.mock_data, which generates examples from the stock builder's features. Its
    policy is USE_FILES with that copy's metadata as data_dir: under the default AUTO policy
    nothing looks prepared (builder.is_prepared() is False), so load() would try to prepare and,
    without TensorFlow, refuse. Neither policy imports TensorFlow for data sources.
"""
import importlib.util
import io
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from conftest import small_config
from segae_jax import data
from segae_jax.data import pets
from segae_jax.errors import UserInputError

# Without TensorFlow installed the `'tensorflow' not in sys.modules` checks hold trivially; with it
# installed they check that nothing here imports it.
TF_INSTALLED = importlib.util.find_spec('tensorflow') is not None
# Source photos (height, width, channels): shrunk and enlarged, one grayscale.
SOURCES = {'train': [(37, 53, 3), (64, 40, 3), (20, 30, 1), (45, 45, 3)],
           'test': [(50, 33, 3), (24, 60, 3)]}
SIZE = (40, 48)  # Not square: a swapped height and width would show.


def _encode(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def write_prepared(root, file_format='array_record', rng_seed=0):
  """Writes a small prepared oxford_iiit_pet 4.0.0 into tfds dir `root`, as tfds would.

  Returns {split: [(jpeg bytes, trimap uint8 [h, w] with values 1, 2, 3)]}.
  """
  builder = tfds.builder(pets.NAME, data_dir=str(root), file_format=file_format)
  info = builder.info
  builder.data_path.mkdir(parents=True)
  rng = np.random.default_rng(rng_seed)
  written, splits = {}, []
  for split, shapes in SOURCES.items():
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_path, dataset_name=pets.NAME,
                                             filetype_suffix=file_format, split=split)
    written[split], examples = [], []
    for i, shape in enumerate(shapes):
      pixels = rng.integers(0, 256, shape, dtype=np.uint8)
      jpeg = _encode(pixels[..., 0] if shape[-1] == 1 else pixels, 'JPEG')
      trimap = rng.integers(1, 4, shape[:2], dtype=np.uint8)
      written[split].append((jpeg, trimap))
      examples.append({'image': jpeg, 'segmentation_mask': _encode(trimap, 'PNG'), 'label': i,
                       'species': i % 2, 'file_name': f'pet_{i}.jpg',
                       'head_bbox': tfds.features.BBox(0.1, 0.2, 0.5, 0.6)})
    if file_format == 'array_record':  # A tfrecord copy is only looked at through its metadata.
      writer = ArrayRecordWriter(os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)),
                                 'group_size:1')
      for example in examples:
        writer.write(info.features.serialize_example(info.features.encode_example(example)))
      writer.close()
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(shapes)], num_bytes=0,
                                      filename_template=template))
  info.set_splits(tfds.core.SplitDict(splits))
  info.write_to_directory(builder.data_path)
  return written


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('pets_tfds')
  return str(root), write_prepared(root)


def _mock(prepared_root, num_examples):
  return tfds.testing.mock_data(num_examples=num_examples, data_dir=prepared_root,
                                policy=tfds.testing.MockPolicy.USE_FILES)


def _bilinear(image, size):
  return np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))


def _centres(n, m):
  """Source index of each of m output pixels in an n -> m nearest-neighbour resize: the output
  pixel centre (i + 0.5) * n / m rounded down, summed step by step in float64 as Pillow does (so
  an exact tie such as row 7 of 64 -> 40, 12.0, can land on 11)."""
  position, out = 0.5 * (n / m), []
  for _ in range(m):
    out.append(int(position))
    position += n / m
  return np.array(out)


def _nearest(array, height, width):
  """Nearest-neighbour resize, computed here rather than by Pillow."""
  return array[_centres(array.shape[0], height)][:, _centres(array.shape[1], width)]


def _expected_classes(trimap):
  """Trimap 1 pet -> 1, 2 background -> 0, 3 border -> 2, anything else -> 255 (ignored)."""
  out = np.full(trimap.shape, 255, np.uint8)
  for value, label in ((1, 1), (2, 0), (3, 2)):
    out[trimap == value] = label
  return out


def test_real_files_decode_resize_and_map_trimaps(prepared):
  root, written = prepared
  ds = pets.load({'name': 'oxford_iiit_pet', 'tfds_dir': root, 'image_size': SIZE,
                  'download': False})
  assert 'tensorflow' not in sys.modules
  assert (ds.name, ds.image_shape, ds.num_classes) == ('oxford_iiit_pet', SIZE + (3,), 3)
  assert tuple(ds.class_names) == ('background', 'pet', 'border')
  for split, source in (('train', ds.train), ('test', ds.test)):
    assert len(source) == len(written[split])
    order = list(range(len(source)))[::-1]  # Any order, as the shuffling pipeline asks.
    batch = source.__getitems__(order)
    assert batch['image'].shape == (len(order),) + SIZE + (3,)
    assert batch['segmentation'].shape == (len(order),) + SIZE
    assert batch['image'].dtype == batch['segmentation'].dtype == np.uint8
    for j, index in enumerate(order):
      jpeg, trimap = written[split][index]
      decoded = np.asarray(Image.open(io.BytesIO(jpeg)))  # What tfds decodes (lossy JPEG).
      expected = _bilinear(decoded, SIZE)
      if expected.ndim == 2:  # A grayscale photo comes out with 3 equal channels.
        expected = np.repeat(expected[..., None], 3, axis=-1)
      np.testing.assert_array_equal(batch['image'][j], expected)
      np.testing.assert_array_equal(batch['segmentation'][j],
                                    _expected_classes(_nearest(trimap, *SIZE)))
    assert set(np.unique(batch['segmentation'])) == {0, 1, 2}


def test_mock_data_batches_and_mapping_without_tensorflow(prepared):
  root, _ = prepared
  with _mock(root, num_examples=16):
    ds = data.build({'name': 'oxford_iiit_pet', 'tfds_dir': '', 'image_size': SIZE,
                     'download': True})
    # The generated examples, read straight from tfds (same deterministic generator per index).
    raw = tfds.data_source('oxford_iiit_pet', split='train', download=False)
    assert len(ds.train) == len(ds.test) == 16
    batch = next(data.TrainIterator(ds.train, 8, seed=0, preprocess=ds.preprocess))
    assert batch['image'].shape == (8,) + SIZE + (3,) and batch['image'].dtype == np.float32
    assert batch['segmentation'].shape == (8,) + SIZE and batch['segmentation'].dtype == np.int32
    assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0
    pmap_batch = next(data.TrainIterator(ds.train, 8, seed=0, preprocess=ds.preprocess,
                                         num_local_devices=4))
    assert pmap_batch['image'].shape == (4, 2) + SIZE + (3,)
    evals = list(data.eval_batches(ds.test, 12, ds.preprocess))
    assert [b['image'].shape for b in evals] == [(12,) + SIZE + (3,)] * 2
    assert [b['valid'].sum() for b in evals] == [12, 4]  # 16 examples, the rest padding.
    assert evals[0]['segmentation'].dtype == np.int32

    checked = 0
    examples = ds.train.__getitems__(list(range(16)))
    for i in range(16):
      source = raw[i]
      # Mock examples have random sizes (image and mask differ) and values in [0, 255).
      np.testing.assert_array_equal(examples['image'][i], _bilinear(source['image'], SIZE))
      trimap = _nearest(source['segmentation_mask'][..., 0], *SIZE)
      np.testing.assert_array_equal(examples['segmentation'][i], _expected_classes(trimap))
      checked += np.isin(trimap, (1, 2, 3)).sum()
    assert checked > 100  # The {1, 2, 3} -> {1, 0, 2} mapping was seen on enough pixels.
  assert 'tensorflow' not in sys.modules


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_short_training_run_under_mock_data(prepared, tmp_path):
  from segae_jax import training
  root, _ = prepared
  config = small_config(root, 'unet_pets', **{
      'data.image_size': (32, 32), 'model.features': (8, 16), 'batch_size': 8,
      'num_train_steps': 3, 'eval_batch_size': 8, 'warmup_steps': 1, 'eval_every_steps': 3,
      'checkpoint_every_steps': 3, 'log_every_steps': 1, 'num_pictures': 4})
  assert config.data.augment.crop_min_scale == 0.5 and dict(config.loss) == {'seg_ce': 0.5,
                                                                              'dice': 0.5}
  with _mock(root, num_examples=16):
    results = training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['step'] == 3 and results['dataset'] == 'oxford_iiit_pet'
  assert 0.0 <= results['test']['miou'] <= 1.0
  assert set(results['test']['per_class']) == {'background', 'pet', 'border'}
  assert os.path.exists(tmp_path / 'run' / 'results.json')
  assert 'tensorflow' not in sys.modules


def test_unprepared_without_download_is_one_line(tmp_path):
  with pytest.raises(UserInputError, match='not prepared in .*config.data.download is False') as e:
    pets.load({'name': 'oxford_iiit_pet', 'tfds_dir': str(tmp_path), 'download': False})
  assert '\n' not in str(e.value)


@pytest.mark.skipif(TF_INSTALLED, reason='TensorFlow is installed: would download')
def test_unprepared_without_tensorflow_refuses_before_downloading(tmp_path):
  with pytest.raises(UserInputError, match='TensorFlow installed and internet.*pip install '
                                           'tensorflow-cpu') as e:
    pets.load({'name': 'oxford_iiit_pet', 'tfds_dir': str(tmp_path), 'download': True})
  assert '\n' not in str(e.value)
  assert not os.listdir(tmp_path)  # Nothing downloaded or half-built.


def test_tfrecord_copy_and_bad_settings_are_named(tmp_path):
  write_prepared(tmp_path, file_format='tfrecord')  # Metadata only: what tfds.load leaves.
  with pytest.raises(UserInputError, match='prepared as tfrecord.*no random access'):
    pets.load({'name': 'oxford_iiit_pet', 'tfds_dir': str(tmp_path)})
  for key, value, message in [('image_size', (0, 8), 'image_size=\\(0, 8\\)'),
                              ('image_size', 64, 'image_size=64'),
                              ('image_size', (8, 8, 3), 'image_size=\\(8, 8, 3\\)'),
                              ('download', 'yes', "download='yes'")]:
    with pytest.raises(UserInputError, match=message):
      pets.load({'name': 'oxford_iiit_pet', 'tfds_dir': str(tmp_path), key: value})
