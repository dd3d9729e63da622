"""Fashion-MNIST scenes built from the real IDX files: determinism, provenance, mask/box agreement."""
import os
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segae_jax import data
from segae_jax.data import fashion_mnist as fm
from segae_jax.data import scenes
from segae_jax.errors import UserInputError

TINY = dict(num_train=40, num_test=20)
# A non-default shape: smaller canvas, always 2 or 3 objects, smaller items.
OTHER = dict(canvas_size=40, num_train=20, num_test=10, min_objects=2, max_objects=3,
             min_scale=0.5, max_scale=1.25, seed=3)


@pytest.fixture(scope='module')
def idx():
  """The real Fashion-MNIST splits: {split: (images uint8 [N, 28, 28], labels uint8 [N])}."""
  idx_dir = fm.find_idx_dir('')
  return {split: tuple(fm.read_idx(os.path.join(idx_dir, f'{prefix}-{kind}-ubyte.gz'))
                       for kind in ('images-idx3', 'labels-idx1'))
          for split, prefix in fm.SPLIT_FILES.items()}


def _read_all(builder, split):
  source = scenes.load_examples(builder, split)
  return source.__getitems__(list(range(len(source))))


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """{name: (config, {split: list of examples})}, each built into its own tfds dir."""
  out = {}
  for name, params, folder in [('tiny', TINY, 'a'), ('tiny_again', TINY, 'b'),
                               ('tiny_seed1', dict(TINY, seed=1), 'a'), ('other', OTHER, 'a')]:
    config = scenes.ScenesConfig(**params)
    # 'a' is shared on purpose: different parameters must prepare into different folders.
    builder = scenes.prepare(config, '', str(tmp_path_factory.getbasetemp() / folder))
    out[name] = config, {split: _read_all(builder, split) for split in ('train', 'test')}
  return out


def test_config_name_encodes_parameters_and_bad_values_are_named():
  assert scenes.ScenesConfig().name == 'c64_tr10000_te2000_o1-4_s0.75-1.5_seed0'
  assert scenes.ScenesConfig(**OTHER).name == 'c40_tr20_te10_o2-3_s0.5-1.25_seed3'
  assert scenes.ScenesConfig(min_scale=0.8).name != scenes.ScenesConfig(min_scale=0.80001).name
  bad = [(dict(canvas_size=0), 'canvas_size=0'), (dict(num_train=0), 'num_train=0'),
         (dict(num_test=-1), 'num_test=-1'), (dict(min_objects=0), 'min_objects=0'),
         (dict(min_objects=3, max_objects=2), 'max_objects=2: expected >= min_objects=3'),
         (dict(max_objects=300), 'max_objects=300'), (dict(min_objects=1.5), 'min_objects=1.5'),
         (dict(min_scale=0.0), 'min_scale=0.0'), (dict(min_scale=0.01), 'min_scale=0.01'),
         (dict(min_scale=1.2, max_scale=1.0), 'max_scale=1.0: expected >= min_scale=1.2'),
         (dict(canvas_size=41), r'canvas_size=41: expected >= 28 \* max_scale = 42'),
         (dict(seed=-1), 'seed .*=-1'), (dict(canvas_size=True), 'canvas_size=True')]
  for params, message in bad:
    with pytest.raises(UserInputError, match=message):
      scenes.ScenesConfig(**params)
  with pytest.raises(UserInputError, match='scenes_seed'):
    scenes.load({'scenes_seed': -2})
  with pytest.raises(TypeError):  # The name is derived, never given.
    scenes.ScenesConfig(name='mine')


def _assert_same(a, b):
  for x, y in zip(a, b, strict=True):
    for key in ('image', 'segmentation', 'instances'):
      np.testing.assert_array_equal(x[key], y[key])
    for key, value in scenes.stack_objects(x['objects']).items():
      np.testing.assert_array_equal(value, scenes.stack_objects(y['objects'])[key])


def test_deterministic_order_independent_and_seeded(built, idx):
  config, tiny = built['tiny']
  for split in ('train', 'test'):
    _assert_same(tiny[split], built['tiny_again'][1][split])
    # Scene i is a function of (seed, split, i) alone: rendering it on its own gives the stored one.
    stored = tiny[split][7]
    alone = scenes.render_scene(config, split, 7, *idx[split])
    np.testing.assert_array_equal(alone['image'], stored['image'])
    np.testing.assert_array_equal(alone['instances'], stored['instances'])
    np.testing.assert_allclose(np.array(alone['objects']['bbox'], np.float32).reshape(-1, 4),
                               scenes.stack_objects(stored['objects'])['bbox'])
  same_image = [np.array_equal(a['image'], b['image'])
                for a, b in zip(tiny['train'], built['tiny_seed1'][1]['train'])]
  assert not any(same_image)
  # Train and test scenes with the same index differ too (the split is in the seed).
  assert not np.array_equal(tiny['train'][0]['image'], tiny['test'][0]['image'])


def _candidates(source_image, sizes):
  """Independent re-derivation: {size: (pixels, mask)} for each candidate item size."""
  filled = ndimage.binary_fill_holes(source_image > 0).astype(np.uint8)
  return {size: (np.asarray(Image.fromarray(source_image).resize((size, size), Image.BILINEAR)),
                 np.asarray(Image.fromarray(filled).resize((size, size), Image.NEAREST)) > 0)
          for size in sizes}


def _matches_source(example, instance_id, source_image, sizes):
  """Whether the object's visible pixels are exactly `source_image` resized to one of `sizes` and
  pasted with its whole mask visible (as the last-painted object always is)."""
  visible = example['instances'] == instance_id
  rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
  for size, (pixels, mask) in _candidates(source_image, sizes).items():
    mrows, mcols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if (rows[-1] - rows[0], cols[-1] - cols[0]) != (mrows[-1] - mrows[0], mcols[-1] - mcols[0]):
      continue
    top, left = rows[0] - mrows[0], cols[0] - mcols[0]
    if top < 0 or left < 0 or top + size > visible.shape[0] or left + size > visible.shape[1]:
      continue
    window = (slice(top, top + size), slice(left, left + size))
    if (np.array_equal(visible[window], mask) and visible.sum() == mask.sum()
        and np.array_equal(example['image'][..., 0][window][mask], pixels[mask])):
      return True
  return False


@pytest.mark.parametrize('name', ['tiny', 'other'])
def test_objects_come_from_their_own_split(built, idx, name):
  config, splits = built[name]
  sizes = range(scenes.item_size(config.min_scale), scenes.item_size(config.max_scale) + 1)
  single = 0
  for split, examples in splits.items():
    other = 'test' if split == 'train' else 'train'
    images, labels = idx[split]
    for example in examples:
      objects = scenes.stack_objects(example['objects'])
      assert (objects['source_index'] < len(images)).all()
      np.testing.assert_array_equal(objects['label'], labels[objects['source_index']])
      # The last-painted object is never occluded: its pixels are the resized source image.
      top, source = objects['instance_id'][-1], objects['source_index'][-1]
      assert _matches_source(example, top, images[source], sizes), (split, source)
      if source < len(idx[other][0]):
        assert not _matches_source(example, top, idx[other][0][source], sizes)
      single += len(objects['instance_id']) == 1 and top == 1
  assert name == 'other' or single >= 3  # Single-object scenes were checked above.


@pytest.mark.parametrize('name', ['tiny', 'other'])
def test_masks_boxes_labels_and_counts_agree(built, name):
  config, splits = built[name]
  s = config.canvas_size
  painted_counts, dropped = [], 0
  for examples in splits.values():
    for example in examples:
      image, seg, inst = example['image'], example['segmentation'], example['instances']
      assert image.shape == (s, s, 1) and seg.shape == inst.shape == (s, s)
      assert image.dtype == seg.dtype == inst.dtype == np.uint8
      objects = scenes.stack_objects(example['objects'])
      ids = objects['instance_id']
      # One entry per visible instance, in painting order; fully occluded ones are dropped.
      np.testing.assert_array_equal(ids, np.setdiff1d(np.unique(inst), [0]))
      np.testing.assert_array_equal((seg == 0), (inst == 0))
      assert (image[..., 0][seg == 0] == 0).all()
      for box, label, instance_id in zip(objects['bbox'], objects['label'], ids):
        mask = inst == instance_id
        assert (seg[mask] == label + 1).all()
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        expected = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / s
        np.testing.assert_allclose(box, expected, atol=1e-6)
      # The last-painted object is always visible, so the largest id is the number painted.
      painted_counts.append(ids[-1])
      assert len(ids) <= ids[-1]
      dropped += ids[-1] - len(ids)
  assert min(painted_counts) == config.min_objects and max(painted_counts) == config.max_objects
  assert set(painted_counts) == set(range(config.min_objects, config.max_objects + 1))
  assert name != 'tiny' or dropped == 2  # Fully occluded objects occur and are dropped.


def test_load_batches_shapes_dtypes_and_values(built, tmp_path_factory):
  tfds_dir = str(tmp_path_factory.getbasetemp() / 'a')
  dataset = scenes.load(dict(TINY, name='fashion_mnist_scenes', tfds_dir=tfds_dir))
  assert (len(dataset.train), len(dataset.test)) == (40, 20)
  assert dataset.image_shape == (64, 64, 1) and dataset.num_classes == 11
  assert dataset.class_names[:2] == ('background', 't-shirt/top') and len(dataset.class_names) == 11
  stored = built['tiny'][1]['train']
  np.testing.assert_array_equal(dataset.train.arrays['segmentation'],
                                np.stack([e['segmentation'] for e in stored]))
  batch = next(data.TrainIterator(dataset.train, 8, seed=0, preprocess=dataset.preprocess))
  assert batch['image'].shape == (8, 64, 64, 1) and batch['image'].dtype == np.float32
  assert batch['segmentation'].shape == (8, 64, 64) and batch['segmentation'].dtype == np.int32
  assert 0.0 <= batch['image'].min() and batch['image'].max() <= 1.0 and batch['image'].max() > 0.5
  assert batch['segmentation'].min() == 0 and batch['segmentation'].max() <= 10
  test_batches = list(data.eval_batches(dataset.test, 16, dataset.preprocess))
  assert [int(b['valid'].sum()) for b in test_batches] == [16, 4]
  first = test_batches[0]
  np.testing.assert_array_equal(np.round(first['image'][0] * 255.0),
                                built['tiny'][1]['test'][0]['image'].astype(np.float32))
  assert 'tensorflow' not in sys.modules
