"""Training views with in and out keys (data.views): several of one kind in one batch part, drawn
in order from each example's own generator, registered by name, and checked against the batch
contract (segae_jax.batch) on the first training batch."""
import dataclasses
from typing import ClassVar

import numpy as np
import pytest
from scipy import ndimage

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
    (lambda: views.make('blur'), "unknown view 'blur'; known: affine_grid, cutmix_box"),
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


# Issue 36: strong views that keep a uniform empty background, and the geometric strong view.


def _scene(n=6, channels=1):
  """Images of an empty (0) background with a few bright squares, like the scenes."""
  rng = np.random.default_rng(3)
  images = np.zeros((n,) + SIZE + (channels,), np.float32)
  for i in range(n):
    top, left = rng.integers(0, 6, 2)
    images[i, top:top + 5, left:left + 4] = rng.uniform(0.3, 1.0)
  return images


def _strong_as_before(image, rng, jitter_prob=0.8, blur_prob=0.5, noise_prob=0.5):
  """StrongView's defaults as the code drew them before issue 36 (commit 4190062): three
  coins, brightness / contrast / gamma, sigma, std, then the noise array if it is added."""
  jitter, blur, noisy = (rng.random() < p for p in (jitter_prob, blur_prob, noise_prob))
  b, c, g = (rng.uniform(1 - x, 1 + x) for x in (0.5, 0.5, 0.3))
  sigma, std = rng.uniform(0.1, 2.0), rng.uniform(0.0, 0.1)
  x = image
  if jitter:
    x = np.clip(x * b, 0.0, 1.0)
    x = np.clip((x - x.mean()) * c + x.mean(), 0.0, 1.0) ** g
  if blur:
    x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode='reflect')
  if noisy and image.shape[-1] == 1 and std > 0:
    x = np.clip(x + std * rng.standard_normal(x.shape, dtype=np.float32), 0.0, 1.0)
  return x.astype(np.float32)


@pytest.mark.parametrize('probs', [{}, {'jitter_prob': 1.0, 'blur_prob': 1.0,
                                        'noise_prob': 1.0}])
def test_the_strong_views_defaults_draw_and_give_what_they_did_before(probs):
  images = np.concatenate([_scene(), _images(4)])
  got = views.StrongView(**probs)({'image': images}, _rngs(10))['strong']
  rngs = _rngs(10)
  want = np.stack([_strong_as_before(images[i], rngs[i], **probs) for i in range(10)])
  assert got.tobytes() == want.tobytes()


def _coins(jitter=0.0, blur=0.0, noise=0.0, **fields):
  return views.StrongView(jitter_prob=jitter, blur_prob=blur, noise_prob=noise, **fields)


def test_signal_noise_leaves_empty_pixels_empty_and_moves_bright_ones():
  images = _scene()
  signal = _coins(noise=1.0, noise_mode='signal')({'image': images}, _rngs(6))['strong']
  additive = _coins(noise=1.0)({'image': images}, _rngs(6))['strong']
  empty = images == 0
  assert (signal[empty] == 0).all() and (additive[empty] != 0).any()
  bright = images > 0
  assert (signal[bright] != images[bright]).mean() > 0.9


def test_contrast_about_zero_keeps_empty_pixels_empty():
  images = _scene()
  zero = _coins(jitter=1.0, contrast_center='zero')({'image': images}, _rngs(6))['strong']
  mean = _coins(jitter=1.0)({'image': images}, _rngs(6))['strong']
  empty = images == 0
  assert (zero[empty] == 0).all() and (mean[empty] != 0).any()
  assert not np.array_equal(zero[~empty], images[~empty])


def test_blur_sigma_is_scaled_to_the_image_size():
  """blur_sigma (0.1, 2.0) for 512-pixel images: on these min(h, w) = 10 pixel ones, sigma is
  the same draw times 10 / 512."""
  images = _scene()
  view = _coins(blur=1.0, blur_sigma=(4.0, 40.0), blur_reference_size=512)
  got = view({'image': images}, _rngs(6))['strong']
  rngs = _rngs(6)
  for i, rng in enumerate(rngs):
    rng.random(6)  # The three coins, brightness, contrast and gamma.
    sigma = rng.uniform(4.0, 40.0) * min(SIZE) / 512
    want = ndimage.gaussian_filter(images[i], (sigma, sigma, 0), mode='reflect')
    np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7)
  unscaled = _coins(blur=1.0, blur_sigma=(4.0, 40.0))({'image': images}, _rngs(6))['strong']
  assert np.abs(got - images).max() < np.abs(unscaled - images).max()


@pytest.mark.parametrize('fields', [
    {'noise_mode': 'signal'}, {'contrast_center': 'zero'}, {'blur_reference_size': 512},
    {'noise_mode': 'signal', 'contrast_center': 'zero', 'blur_reference_size': 64}])
def test_the_modes_draw_as_many_numbers_as_the_defaults(fields):
  """The CutMix box drawn after the strong view is the same whatever its modes."""
  images = _scene(8)
  made = lambda strong: views.with_views(lambda examples, rngs: dict(examples),
                                         [strong, views.CutMixBox(prob=1.0)])
  got = made(views.StrongView(noise_prob=1.0, **fields))({'image': images}, _rngs(8))
  want = made(views.StrongView(noise_prob=1.0))({'image': images}, _rngs(8))
  np.testing.assert_array_equal(got['cutmix'], want['cutmix'])
  assert not np.array_equal(got['strong'], want['strong'])


@pytest.mark.parametrize('fields,words', [
    ({'noise_mode': 'multiplicative'},
     "config.data.strong_augment.noise_mode='multiplicative': expected one of 'additive', "
     "'signal'"),
    ({'contrast_center': 'median'}, "config.data.strong_augment.contrast_center='median'"),
    ({'blur_reference_size': -1}, 'config.data.strong_augment.blur_reference_size=-1'),
    ({'blur_reference_size': 51.2}, 'config.data.strong_augment.blur_reference_size=51.2'),
    ({'rotation': 200.0}, 'config.data.strong_geometry.rotation=200.0'),
    ({'scale': 1.0}, 'config.data.strong_geometry.scale=1.0'),
])
def test_a_bad_mode_or_geometry_is_one_line(fields, words):
  cls = views.AffineGrid if {'rotation', 'scale'} & set(fields) else views.StrongView
  with pytest.raises(UserInputError) as raised:
    cls.from_config(fields)
  assert words in str(raised.value) and '\n' not in str(raised.value)


def test_the_affine_grid_is_the_identity_when_not_applied_and_checked_as_coords():
  images = _images(5)
  made = views.with_views(lambda examples, rngs: dict(examples),
                          [views.AffineGrid(prob=0.0, outkey='grid_1'),
                           views.AffineGrid(prob=1.0, outkey='grid_2'), views.CutMixBox()])
  got = made({'image': images}, _rngs(5))
  own = np.stack(np.indices(SIZE), axis=-1).astype(np.float32)
  assert got['grid_1'].dtype == np.float32 and got['grid_1'].shape == (5,) + SIZE + (2,)
  np.testing.assert_array_equal(got['grid_1'], np.broadcast_to(own, (5,) + SIZE + (2,)))
  assert not np.allclose(got['grid_2'], own)
  batch_lib.check(got, {'grid_1': None, 'grid_2': None})
  # Five draws per example whatever is applied: the box after it is the same.
  never = views.with_views(lambda examples, rngs: dict(examples),
                           [views.AffineGrid(prob=0.0), views.AffineGrid(prob=0.0, outkey='grid_2'),
                            views.CutMixBox()])({'image': images}, _rngs(5))
  np.testing.assert_array_equal(never['cutmix'], got['cutmix'])


def test_the_affine_grid_follows_its_draws():
  """One example by hand: the grid maps the centre moved by the shift back to the centre, and
  is scaled and rotated as drawn."""
  view = views.AffineGrid(prob=1.0, scale=0.3, rotation=40.0, translation=0.2)
  rng = _rngs(1)[0]
  grid = view.grid(*SIZE, rng)
  rng = _rngs(1)[0]
  rng.random()
  factor, angle = rng.uniform(0.7, 1.3), np.deg2rad(rng.uniform(-40.0, 40.0))
  shift = np.array([rng.uniform(-0.2, 0.2) * SIZE[0], rng.uniform(-0.2, 0.2) * SIZE[1]])
  center = (np.array(SIZE) - 1) / 2
  for p in [(0, 0), (3, 7), (11, 9)]:
    v = (np.array(p) - center - shift) / factor
    # Rotating the source back by the angle: counter-clockwise on screen is (-sin, cos) per col.
    want = center + [v[0] * np.cos(angle) + v[1] * np.sin(angle),
                     -v[0] * np.sin(angle) + v[1] * np.cos(angle)]
    np.testing.assert_allclose(grid[p], want, rtol=1e-5, atol=1e-5)
