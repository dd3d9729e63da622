"""Training views with in and out keys (data.views): several of one kind in one batch part, drawn
in order from each example's own generator, registered by name, and checked against the batch
contract (segae_jax.batch) on the first training batch."""
import dataclasses
from typing import ClassVar

import numpy as np
import pytest

from segae_jax import batch as batch_lib
from segae_jax import data
from segae_jax.data import views
from segae_jax.data.dataset import Dataset
from segae_jax.errors import UserInputError

SIZE = (12, 10)


def _rngs(n=4):
  return data.ExampleRngs(0, 1, 0, range(n))


def _images(n=4, channels=1):
  return np.random.default_rng(0).random((n,) + SIZE + (channels,), dtype=np.float32)


def test_default_out_keys_are_the_contracts_keys_of_each_kind():
  made = [views.StrongView(), views.CutMixBox(), views.PatchMask(0.5, 2, SIZE),
          views.GaussianNoise()]
  assert [v.outkey for v in made] == ['strong', 'cutmix', 'mask', 'noise']
  assert all(v.inkey == 'image' for v in made)
  assert [batch_lib.kind_of(v.outkey) for v in made] == [v.kind for v in made]
  assert {'cutmix_box', 'gaussian_noise', 'patch_mask', 'strong'} <= set(views.VIEWS.names())


def test_two_strong_views_coexist_each_drawn_after_the_one_before():
  """strong_1 is what a single strong view draws; strong_2 continues from the generators where
  strong_1 left them, so it is another view, the same for any worker count."""
  images = _images()
  pair = views.with_views(lambda examples, rngs: dict(examples),
                          [views.StrongView(outkey='strong_1'), views.StrongView(outkey='strong_2'),
                           views.CutMixBox(prob=1.0, outkey='cutmix_1')])
  got = pair({'image': images}, _rngs())
  assert list(got) == ['image', 'strong_1', 'strong_2', 'cutmix_1']
  one = views.StrongView()({'image': images}, _rngs())['strong']
  np.testing.assert_array_equal(got['strong_1'], one)
  rngs = _rngs()
  views.StrongView()({'image': images}, rngs)
  np.testing.assert_array_equal(got['strong_2'], views.StrongView()({'image': images},
                                                                     rngs)['strong'])
  assert not np.array_equal(got['strong_1'], got['strong_2'])
  assert got['cutmix_1'].shape == (4,) + SIZE and got['cutmix_1'].max() == 1.0


def test_a_view_reads_its_in_key():
  images = _images()
  batch = views.StrongView(outkey='strong_1')({'image': images}, _rngs())
  stronger = views.StrongView(inkey='strong_1', outkey='strong_2')(batch, _rngs())
  again = views.StrongView()({'image': batch['strong_1']}, _rngs())['strong']
  np.testing.assert_array_equal(stronger['strong_2'], again)
  noise = views.GaussianNoise(inkey='wide', outkey='noise_2')({'wide': np.zeros((2, 3, 5, 7))},
                                                                _rngs(2))['noise_2']
  assert noise.shape == (2, 3, 5, 7)


@pytest.mark.parametrize('make_view,words', [
    (lambda: views.StrongView(outkey='mask'),
     "StrongView(outkey='mask'): the batch contract (segae_jax.batch) declares 'mask' of kind "
     "pixel_map, but this view writes kind image"),
    (lambda: views.CutMixBox(outkey='strong_2'), "declares 'strong_2' of kind image"),
    (lambda: views.GaussianNoise(outkey='unlabeled'), 'other than the batch parts'),
    (lambda: views.with_views(None, [views.StrongView(), views.StrongView()]),
     "two views write the batch key 'strong'; give each its own outkey (e.g. 'strong_1', "
     "'strong_2')"),
    (lambda: views.make('blur'), "unknown view 'blur'; known: cutmix_box"),
    (lambda: views.make('strong', blur=1.0), "view 'strong' has no field(s) blur"),
    (lambda: views.make('patch_mask', ratio=0.5), "view 'patch_mask' needs field(s) patch_size, "
     'image_size'),
    (lambda: views.make('cutmix_box', prob=2.0), 'config.objective_params.cutmix_prob=2.0'),
])
def test_a_bad_view_is_one_line(make_view, words):
  with pytest.raises(UserInputError) as raised:
    make_view()
  assert words in str(raised.value) and '\n' not in str(raised.value)


def test_make_builds_a_registered_view_with_its_fields():
  view = views.make('cutmix_box', prob=1.0, outkey='cutmix_2')
  assert view == views.CutMixBox(prob=1.0, outkey='cutmix_2')
  assert views.make('strong') == views.StrongView()


# A user's views, as a plug-in module would write them (segae_jax.register_view = VIEWS.register).
@views.VIEWS.register('test_views_forgetful')
@dataclasses.dataclass(frozen=True)
class Forgetful(views.InKeyOutKey):
  """Promises its out key and never writes it."""
  outkey: str = dataclasses.field(default='edges', kw_only=True)
  kind: ClassVar[str] = 'image'

  def __call__(self, batch, rngs):
    return batch


@dataclasses.dataclass(frozen=True)
class Flattened(views.InKeyOutKey):
  """Writes an image-kind key without its channel axis."""
  outkey: str = dataclasses.field(default='edges', kw_only=True)
  kind: ClassVar[str] = 'image'

  def __call__(self, batch, rngs):
    return dict(batch, **{self.outkey: batch[self.inkey][..., 0]})


def _dataset():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16,) + SIZE + (1,), dtype=np.uint8)
  labeled = data.ArraySource({'image': images[:8],
                              'segmentation': rng.integers(0, 2, (8,) + SIZE, dtype=np.uint8)})
  pool = data.ArraySource({'image': images[8:]})
  return Dataset('hand_made', labeled, labeled, SIZE + (1,), 2, ('a', 'b'),
                 data.scale_images, unlabeled=pool)


CONFIG = {'data': {'augment': {'flip': True}, 'unlabeled_per_batch': 4}, 'batch_size': 8,
          'seed': 0}


def test_train_inputs_give_each_part_its_views_keys():
  by_part = {'labeled': [views.StrongView(outkey='strong_1'), views.CutMixBox()],
             'unlabeled': [views.StrongView(outkey='strong_1'),
                           views.StrongView(outkey='strong_2'), views.GaussianNoise()]}
  batch = next(data.train_inputs(CONFIG, _dataset(), by_part, None))
  assert sorted(batch) == ['cutmix', 'image', 'segmentation', 'strong_1', 'unlabeled']
  assert sorted(batch['unlabeled']) == ['image', 'noise', 'strong_1', 'strong_2']
  assert views.VIEWS.get('test_views_forgetful') is Forgetful


@pytest.mark.parametrize('view,words', [
    (Forgetful(), "batch part 'unlabeled' has no key 'edges'; it holds image, strong"),
    (Flattened(), "batch part 'unlabeled' key 'edges' is float32 [4, 12, 10]; expected image"),
])
def test_the_first_batch_fails_in_one_line_when_a_view_breaks_its_promise(view, words):
  inputs = data.train_inputs(CONFIG, _dataset(), {'unlabeled': [views.StrongView(), view]}, None)
  with pytest.raises(batch_lib.BatchError) as raised:
    next(inputs)
  assert words in str(raised.value) and '\n' not in str(raised.value)
  inputs.close()
