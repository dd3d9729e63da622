"""The batch contract (segae_jax.batch) on hand-made batches: its layout helpers and its checks."""
import numpy as np
import pytest

from segae_jax import batch
from segae_jax.errors import UserInputError


def _part(n=3, h=4, w=5, c=2, **extra):
  part = {'image': np.zeros((n, h, w, c), np.float32),
          'segmentation': np.zeros((n, h, w), np.int32),
          'labeled': np.ones(n, np.float32)}
  part.update(extra)
  return part


def test_layout_helpers_name_the_spatial_axes_of_each_kind():
  x = np.zeros((3, 4, 5, 2))
  assert batch.SPATIAL_RANK == 2
  assert batch.spatial_axes(x) == (1, 2) and batch.spatial_axes(x, leading=2) == (2, 3)
  assert batch.spatial_shape(x) == (4, 5) and batch.spatial_shape((4, 5, 2), leading=0) == (4, 5)
  assert batch.pixels_shape(x) == (3, 4, 5)
  assert batch.example_axes(x) == (1, 2, 3) and batch.example_axes(x[..., 0]) == (1, 2)
  weights = batch.per_example(np.arange(3.0), x[..., 0])
  assert weights.shape == (3, 1, 1) and (weights * np.ones((3, 4, 5)))[2].min() == 2.0


def test_kinds_of_declared_numbered_and_unknown_keys():
  assert batch.kind_of('strong') == batch.kind_of('strong_2') == 'image'
  assert batch.kind_of('cutmix_1') == batch.kind_of('mask') == 'pixel_map'
  assert batch.kind_of('segmentation') == 'labels' and batch.kind_of('label') == 'class_id'
  assert batch.kind_of('my_own') is None and batch.kind_of('my_own_3') is None
  assert batch.kind_of('grid') == batch.kind_of('grid_1') == batch.kind_of('grid_2') == 'coords'
  assert batch.numbered('strong', 1) == ('strong',)
  assert batch.numbered('strong', 2) == ('strong_1', 'strong_2')
  assert batch.PARTS == (batch.LABELED, batch.UNLABELED) == ('labeled', 'unlabeled')


def test_a_well_formed_training_batch_passes():
  labeled = _part(strong=np.zeros((3, 4, 5, 2), np.float32),
                  cutmix_1=np.zeros((3, 4, 5), np.float32), label=np.zeros(3, np.int64),
                  clean_image=np.zeros((3, 4, 5, 2), np.float32), filename=np.array(['a'] * 3))
  pool = {'image': np.zeros((2, 4, 5, 2), np.float32), 'noise': np.zeros((2, 4, 5, 2)),
          'grid_1': np.zeros((2, 4, 5, batch.SPATIAL_RANK), np.float32)}
  batch.check_training_batch(dict(labeled, unlabeled=pool),
                             {'labeled': ('image', 'strong', 'cutmix_1'),
                              'unlabeled': {'image': None, 'noise': 'image', 'grid_1': None}})
  # A grid with as many coordinates as the image has channels is no exception.
  batch.check(_part(c=2, grid=np.zeros((3, 4, 5, 2), np.float32)), ('grid',))
  batch.check_training_batch(labeled)  # Default: 'image' in each part present.


@pytest.mark.parametrize('part,required,words', [
    (_part(), ('image', 'strong'), "batch part 'labeled' has no key 'strong'"),
    (_part(strong=np.zeros((3, 4, 5), np.float32)), ('strong',),
     "key 'strong' is float32 [3, 4, 5]; expected image float [n, s0, s1, c]"),
    (_part(mask=np.zeros((3, 4, 6), np.float32)), (), "key 'mask' is float32 [3, 4, 6]"),
    (_part(segmentation=np.zeros((3, 4, 5), np.float32)), (), "key 'segmentation' is float32"),
    (_part(labeled=np.ones(2, np.float32)), (), "'labeled' is float32 [2]; expected example"),
    (_part(label=np.zeros(3, np.float32)), (), "key 'label' is float32 [3]"),
    (_part(strong_2=np.zeros((3, 4, 5, 2), np.int32)), (), "key 'strong_2' is int32"),
    # The sampling grid: one coordinate per spatial axis, in floats, the image's size.
    (_part(grid=np.zeros((3, 4, 5, 3), np.float32)), ('grid',),
     "key 'grid' is float32 [3, 4, 5, 3]; expected coords float [n, s0, s1, 2]"),
    (_part(grid_2=np.zeros((3, 4, 5), np.float32)), (), "key 'grid_2' is float32 [3, 4, 5]"),
    (_part(grid_1=np.zeros((3, 4, 5, 2), np.int32)), (), "key 'grid_1' is int32"),
    (_part(grid=np.zeros((3, 5, 4, 2), np.float32)), (), "key 'grid' is float32 [3, 5, 4, 2]"),
    # A view's own key, checked with the kind the view promises.
    (_part(blurred=np.zeros((3, 4, 5), np.float32)), {'blurred': 'image'},
     "key 'blurred' is float32 [3, 4, 5]; expected image"),
    (_part(blurred=np.zeros((3, 4, 5), np.float32)), {'blurred': 'picture'},
     "key 'blurred' is said to be of kind 'picture'"),
])
def test_a_missing_or_misshapen_key_is_one_line_naming_it(part, required, words):
  with pytest.raises(batch.BatchError) as raised:
    batch.check(part, required)
  message = str(raised.value)
  assert words in message and '\n' not in message
  assert isinstance(raised.value, UserInputError)


def test_the_unlabeled_part_is_checked_on_its_own_and_required_when_asked():
  pool = {'image': np.zeros((2, 4, 5, 2), np.float32), 'strong': np.zeros((2, 5, 4, 2))}
  with pytest.raises(batch.BatchError, match="part 'unlabeled' key 'strong'"):
    batch.check_training_batch(dict(_part(), unlabeled=pool))
  with pytest.raises(batch.BatchError, match="has no part 'unlabeled'"):
    batch.check_training_batch(_part(), {'unlabeled': ('image',)})
  with pytest.raises(ValueError, match='unknown batch parts'):
    batch.check_training_batch(_part(), {'pool': ('image',)})


def test_reduced_precision_images_are_floats():
  ml_dtypes = pytest.importorskip('ml_dtypes')
  batch.check(_part(image=np.zeros((3, 4, 5, 2), ml_dtypes.bfloat16)))
