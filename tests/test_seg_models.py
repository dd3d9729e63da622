"""Segmentation models: U-Net, the U-Net autoencoders (segae, vae_unet) and SegNet."""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segae_jax import models
from segae_jax.errors import UserInputError
from segae_jax.models.segnet import SegNet, max_pool_with_indices, max_unpool
from segae_jax.models.unet import SegAutoencoder, UNet, UNetAutoencoder, VAEUNet

SHAPE = (16, 16, 2)  # Two channels, so a reconstruction head of the wrong width shows.
FEATURES = (4, 8, 16)  # U-Net: 2 pools, 16 -> 8 -> 4.
KEY = jax.random.PRNGKey(0)


def _images(batch=2, shape=SHAPE, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (batch,) + tuple(shape))


def _init(model, x):
  return model.init({'params': KEY, 'reparam': KEY, 'dropout': KEY}, x)


def _apply(model, variables, x, seed=1, **kwargs):
  key = jax.random.PRNGKey(seed)
  return model.apply(variables, x, rngs={'reparam': key, 'dropout': key}, **kwargs)


def _check_norm_params(variables, norm):
  """No conv bias before a norm; BatchNorm keeps running statistics, GroupNorm does not."""
  block = variables['params']['encoder']['level0']['block0']
  assert ('bias' in block['conv']) == (norm == 'none')
  assert ('norm' in block) == (norm != 'none')
  assert ('batch_stats' in variables) == (norm == 'batch')


@pytest.mark.parametrize('norm', ['batch', 'group', 'none'])
@pytest.mark.parametrize('upsample', ['transpose', 'resize'])
def test_unet_shapes(norm, upsample):
  model = models.build({'name': 'unet', 'features': list(FEATURES), 'norm': norm,
                        'upsample': upsample, 'group_norm_groups': 2, 'num_classes': 5}, SHAPE)
  x = _images()
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert set(out) == {'seg_logits'}
  assert out['seg_logits'].shape == (2, 16, 16, 5) and out['seg_logits'].dtype == jnp.float32
  assert np.isfinite(out['seg_logits']).all()
  _check_norm_params(variables, norm)
  dec = variables['params']['decoder']
  if upsample == 'transpose':
    assert dec['up0']['deconv']['kernel'].shape == (2, 2, 16, 8)
  else:
    assert dec['up0']['conv']['kernel'].shape == (3, 3, 16, 8)
  # After the upsample to 8 channels comes the 8-channel skip: 16 inputs to the first conv.
  assert dec['level0']['block0']['conv']['kernel'].shape == (3, 3, 16, 8)
  assert dec['level1']['block0']['conv']['kernel'].shape == (3, 3, 8, 4)


@pytest.mark.parametrize('seg_skips,rec_skips', [(True, False), (False, True), (True, True),
                                                 (False, False)])
def test_segae_shapes_and_skip_wiring(seg_skips, rec_skips):
  model = SegAutoencoder(SHAPE, num_classes=3, features=FEATURES, seg_skips=seg_skips,
                         rec_skips=rec_skips, upsample='resize', norm='group',
                         group_norm_groups=2)
  x = _images()
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert set(out) == {'seg_logits', 'rec_logits', 'z'}
  assert out['seg_logits'].shape == (2, 16, 16, 3)
  assert out['rec_logits'].shape == (2, 16, 16, 2)
  assert out['z'].shape == (2, 4, 4, 16)
  assert all(v.dtype == jnp.float32 for v in out.values())
  p = variables['params']
  # The first conv after the deepest upsample reads 8 channels, plus 8 more if it gets the skip.
  for name, skips in (('seg_decoder', seg_skips), ('rec_decoder', rec_skips)):
    assert p[name]['level0']['block0']['conv']['kernel'].shape[2] == (16 if skips else 8)
  assert p['seg_decoder']['head']['kernel'].shape == (1, 1, 4, 3)
  assert p['rec_decoder']['head']['kernel'].shape == (1, 1, 4, 2)

  # Does the skip information reach each output? d(output)/d(skips) is exactly zero iff not.
  z, skips = model.apply(variables, x, method='encode')
  np.testing.assert_array_equal(z, out['z'])

  def grad_wrt_skips(key):
    f = lambda s: model.apply(variables, z, s, method='decode')[key].sum()
    return sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(jax.grad(f)(skips)))

  assert (grad_wrt_skips('seg_logits') > 0) == seg_skips
  assert (grad_wrt_skips('rec_logits') > 0) == rec_skips


def test_unet_ae_is_segae_without_its_segmentation_decoder():
  kwargs = dict(num_classes=3, features=FEATURES, upsample='resize', norm='group',
                group_norm_groups=2)
  model = UNetAutoencoder(SHAPE, **kwargs)
  x = _images()
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert set(out) == {'rec_logits', 'z'}
  assert out['rec_logits'].shape == (2, 16, 16, 2) and out['z'].shape == (2, 4, 4, 16)
  # Same parameter tree as SegAutoencoder's encoder and reconstruction decoder, so with those
  # parameters it computes SegAutoencoder's reconstruction exactly.
  segae = SegAutoencoder(SHAPE, **kwargs)
  segae_vars = _init(segae, x)
  shared = {k: segae_vars['params'][k] for k in ('encoder', 'rec_decoder')}
  assert jax.tree.structure(shared) == jax.tree.structure(variables['params'])
  np.testing.assert_allclose(_apply(model, {'params': shared}, x)['rec_logits'],
                             _apply(segae, segae_vars, x)['rec_logits'], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('norm,upsample', [('batch', 'transpose'), ('group', 'resize'),
                                           ('none', 'transpose')])
def test_vae_unet_shapes(norm, upsample):
  model = models.build({'name': 'vae_unet', 'features': FEATURES, 'norm': norm,
                        'upsample': upsample, 'group_norm_groups': 4, 'latent_channels': 5},
                       SHAPE)
  x = _images()
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert set(out) == {'seg_logits', 'rec_logits', 'mean', 'logvar', 'z'}
  assert out['seg_logits'].shape == (2, 16, 16, 11)
  assert out['rec_logits'].shape == (2, 16, 16, 2)
  for name in ('mean', 'logvar', 'z'):
    assert out[name].shape == (2, 4, 4, 5) and out[name].dtype == jnp.float32
  _check_norm_params(variables, norm)


def test_vae_unet_sampling_and_reconstruction_only_through_z():
  model = VAEUNet(SHAPE, num_classes=3, features=FEATURES, latent_channels=5)
  x = _images()
  variables = _init(model, x)
  a = _apply(model, variables, x, seed=7)
  b = _apply(model, variables, x, seed=7)
  c = _apply(model, variables, x, seed=8)
  np.testing.assert_array_equal(a['z'], b['z'])
  np.testing.assert_array_equal(a['rec_logits'], b['rec_logits'])
  assert not np.allclose(a['z'], c['z'])
  np.testing.assert_array_equal(a['mean'], c['mean'])  # The key moves only the sample.
  assert not np.allclose(a['z'], a['mean'])

  # __call__ is encode -> decode, and decode samples: with the same key it reproduces a.
  features, skips = model.apply(variables, x, method='encode')
  again = model.apply(variables, features, skips, method='decode',
                      rngs={'reparam': jax.random.PRNGKey(7), 'dropout': jax.random.PRNGKey(7)})
  for key in a:
    np.testing.assert_array_equal(again[key], a[key])

  # The reconstruction reads z only: its gradient w.r.t. the skips is exactly zero, while the
  # segmentation's is not; and its decoder's first conv has no input of skip width.
  def grads(key):
    f = lambda h, s: model.apply(variables, h, s, method='decode',
                                 rngs={'reparam': KEY})[key].sum()
    return jax.grad(f, argnums=(0, 1))(features, skips)

  gfeatures, gskips = grads('rec_logits')
  assert all(float(jnp.abs(g).max()) == 0 for g in gskips)
  assert float(jnp.abs(gfeatures).max()) > 0
  _, gskips = grads('seg_logits')
  assert all(float(jnp.abs(g).max()) > 0 for g in gskips)
  p = variables['params']
  assert p['rec_decoder']['level0']['block0']['conv']['kernel'].shape[2] == 8
  assert p['seg_decoder']['level0']['block0']['conv']['kernel'].shape[2] == 16


@pytest.mark.parametrize('pooling_indices', [True, False])
@pytest.mark.parametrize('norm', ['batch', 'group', 'none'])
def test_segnet_shapes(pooling_indices, norm):
  model = models.build({'name': 'segnet', 'features': (4, 8), 'norm': norm,
                        'group_norm_groups': 2, 'pooling_indices': pooling_indices}, SHAPE)
  x = _images()
  variables = _init(model, x)
  out = _apply(model, variables, x)
  assert set(out) == {'seg_logits'}
  assert out['seg_logits'].shape == (2, 16, 16, 11) and out['seg_logits'].dtype == jnp.float32
  p = variables['params']
  # Mirrored widths and no concatenation: each decoder level reads its own level's width.
  assert p['dec_level1']['block0']['conv']['kernel'].shape == (3, 3, 8, 8)
  assert p['dec_level1']['block1']['conv']['kernel'].shape == (3, 3, 8, 4)
  assert p['dec_level0']['block0']['conv']['kernel'].shape == (3, 3, 4, 4)
  assert p['head']['kernel'].shape == (1, 1, 4, 11)
  assert ('bias' in p['enc_level0']['block0']['conv']) == (norm == 'none')
  assert ('batch_stats' in variables) == (norm == 'batch')


def test_segnet_pooling_indices_change_the_output():
  """Same parameters, unpooling vs nearest upsampling: the indices carry information."""
  x = _images()
  on = SegNet(SHAPE, features=(4, 8), norm='none')
  off = SegNet(SHAPE, features=(4, 8), norm='none', pooling_indices=False)
  variables = _init(on, x)
  a = on.apply(variables, x)['seg_logits']
  b = off.apply(variables, x)['seg_logits']
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_max_pool_with_indices_and_unpool_hand_example():
  x = np.array([[1, 5, 2, 2],
                [3, 4, 2, 2],
                [0, 0, 9, -1],
                [7, 0, 8, 9]], np.float32)
  # Windows: max 5 at top-right; all equal (first wins); 7 bottom-left; 9 tied top-left and
  # bottom-right (first wins).
  pooled, indices = max_pool_with_indices(jnp.asarray(x)[None, :, :, None])
  np.testing.assert_array_equal(pooled[0, :, :, 0], [[5, 2], [7, 9]])
  np.testing.assert_array_equal(indices[0, :, :, 0], [[1, 0], [2, 0]])
  assert pooled.dtype == jnp.float32 and indices.dtype == jnp.int32
  up = max_unpool(pooled, indices)
  np.testing.assert_array_equal(up[0, :, :, 0], [[0, 5, 2, 0],
                                                 [0, 0, 0, 0],
                                                 [0, 0, 9, 0],
                                                 [7, 0, 0, 0]])
  # Other values (decoder features) land at the same positions.
  up = max_unpool(jnp.array([[10., 20.], [30., 40.]])[None, :, :, None], indices)
  np.testing.assert_array_equal(up[0, :, :, 0], [[0, 10, 20, 0],
                                                 [0, 0, 0, 0],
                                                 [0, 0, 40, 0],
                                                 [30, 0, 0, 0]])
  # The pool's gradient goes to exactly the positions the unpool writes to.
  g = jax.grad(lambda v: max_pool_with_indices(v)[0].sum())(jnp.asarray(x)[None, :, :, None])
  np.testing.assert_array_equal(g, max_unpool(jnp.ones((1, 2, 2, 1)), indices))


def test_max_pool_with_indices_matches_loop_reference():
  """Batches and channels stay apart: compare with a plain loop on random data."""
  x = np.asarray(jax.random.normal(KEY, (2, 6, 4, 3)))
  pooled, indices = max_pool_with_indices(jnp.asarray(x))
  up = np.asarray(max_unpool(pooled, indices))
  pooled, indices = np.asarray(pooled), np.asarray(indices)
  for b in range(2):
    for i in range(3):
      for j in range(2):
        for c in range(3):
          window = x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
          k = int(np.argmax(window))
          assert pooled[b, i, j, c] == window.max() and indices[b, i, j, c] == k
          expected = np.zeros((2, 2), np.float32)
          expected[k // 2, k % 2] = window.max()
          np.testing.assert_array_equal(up[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c], expected)


def test_unet64_matches_pytorch_reference_parameter_count():
  """The defaults on 64x64x1 are shared/bench `unet64`; count its PyTorch parameters by hand."""
  feats, classes = (32, 64, 128, 256), 11

  def torch_block(cin, cout):  # 2 x [Conv2d(3x3, bias=False) + BatchNorm2d(weight, bias)]
    return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout

  expected, c = 0, 1
  for f in feats:
    expected += torch_block(c, f)
    c = f
  for f in reversed(feats[:-1]):
    expected += c * f * 2 * 2 + f      # ConvTranspose2d(c, f, 2, 2): weight + bias.
    expected += torch_block(2 * f, f)  # After concatenating the skip.
    c = f
  expected += c * classes + classes    # 1x1 head with bias.
  assert expected == 1_926_763

  model = models.build({'name': 'unet'}, (64, 64, 1))
  x = jax.ShapeDtypeStruct((32, 64, 64, 1), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(KEY, x), x)
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['params']))
  assert count == expected
  # BatchNorm running mean and variance: PyTorch buffers, not parameters; 2 per channel.
  stats = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables['batch_stats']))
  bn_channels = 2 * sum(feats) + 2 * sum(feats[:-1])
  assert stats == 2 * bn_channels
  p = variables['params']
  assert p['encoder']['level0']['block0']['conv']['kernel'].shape == (3, 3, 1, 32)
  assert p['decoder']['up0']['deconv']['kernel'].shape == (2, 2, 256, 128)
  assert p['decoder']['level0']['block0']['conv']['kernel'].shape == (3, 3, 256, 128)
  assert p['decoder']['head']['kernel'].shape == (1, 1, 32, 11)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert out['seg_logits'].shape == (32, 64, 64, 11)


def test_batchnorm_train_updates_stats_eval_is_deterministic():
  model = UNet((8, 8, 1), num_classes=3, features=(4, 8))
  x = _images(4, (8, 8, 1))
  variables = _init(model, x)
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out['seg_logits'].shape == (4, 8, 8, 3)
  old, new = variables['batch_stats'], updates['batch_stats']
  for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    assert not np.allclose(a, b)

  # First BatchNorm by hand: running = 0.9 * running + 0.1 * batch statistic (biased variance).
  kernel = variables['params']['encoder']['level0']['block0']['conv']['kernel']
  h = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  bn = new['encoder']['level0']['block0']['norm']
  np.testing.assert_allclose(bn['mean'], 0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(bn['var'], 0.9 + 0.1 * h.var((0, 1, 2)), rtol=1e-4, atol=1e-6)

  # Eval mode: no mutable collection needed, repeatable, and per-example (running statistics):
  # an example's logits do not depend on the rest of the batch, unlike in train mode.
  trained = {'params': variables['params'], 'batch_stats': new}
  e1 = model.apply(trained, x)['seg_logits']
  e2 = model.apply(trained, x)['seg_logits']
  np.testing.assert_array_equal(e1, e2)
  np.testing.assert_allclose(model.apply(trained, x[:1])['seg_logits'], e1[:1], atol=1e-5)
  t1 = model.apply(trained, x[:2], train=True, mutable=['batch_stats'])[0]['seg_logits']
  assert not np.allclose(t1[:1], out['seg_logits'][:1], atol=1e-3)


def test_dropout_only_in_train_mode():
  model = UNet((8, 8, 1), num_classes=3, features=(4, 8), norm='none', dropout=0.5)
  x = _images(2, (8, 8, 1))
  variables = model.init(KEY, x)
  e1 = model.apply(variables, x)['seg_logits']  # No 'dropout' rng needed.
  np.testing.assert_array_equal(e1, model.apply(variables, x)['seg_logits'])
  t1 = _apply(model, variables, x, seed=1, train=True)['seg_logits']
  t2 = _apply(model, variables, x, seed=2, train=True)['seg_logits']
  assert not np.allclose(t1, t2)
  assert not np.allclose(t1, e1)


@pytest.mark.skipif(jax.local_device_count() < 4, reason='needs 4 devices (tests/conftest.py)')
def test_pmap_batchnorm_with_axis_name_equals_single_device_global_batch():
  shape = (8, 8, 1)
  synced = UNet(shape, num_classes=3, features=(4, 8), norm_axis_name='batch')
  local = UNet(shape, num_classes=3, features=(4, 8))
  x = _images(8, shape, seed=3)
  variables = local.init(KEY, x)  # Both models have the same variables.

  def stats_fn(model):
    def f(v, xb):
      return model.apply(v, xb, train=True, mutable=['batch_stats'])[1]['batch_stats']
    return f

  reference = stats_fn(local)(variables, x)
  shards = x.reshape((4, 2) + shape)
  pmapped = jax.pmap(stats_fn(synced), axis_name='batch', in_axes=(None, 0))(variables, shards)
  unsynced = jax.pmap(stats_fn(local), axis_name='batch', in_axes=(None, 0))(variables, shards)
  for ref, got, alone in zip(jax.tree.leaves(reference), jax.tree.leaves(pmapped),
                             jax.tree.leaves(unsynced)):
    for d in range(4):
      np.testing.assert_allclose(got[d], ref, rtol=1e-5, atol=1e-5)
    # Without the axis name each device normalises with its own 2 examples.
    assert float(jnp.abs(alone[0] - ref).max()) > 1e-4


def test_divisibility_errors():
  bad_unet = UNet((18, 18, 1), features=(4, 8, 16))  # 2 pools: needs a multiple of 4.
  with pytest.raises(UserInputError, match='18x18 is not divisible by 4'):
    _init(bad_unet, _images(1, (18, 18, 1)))
  with pytest.raises(UserInputError, match='12x20 is not divisible by 8'):
    _init(VAEUNet((12, 20, 1), features=(4, 8, 16, 32)), _images(1, (12, 20, 1)))
  # SegNet pools after every level: 3 levels need a multiple of 8; U-Net needs only 4.
  x = jax.ShapeDtypeStruct((1, 20, 20, 1), jnp.float32)
  with pytest.raises(UserInputError, match='20x20 is not divisible by 8'):
    jax.eval_shape(lambda x: _init(SegNet((20, 20, 1), features=(4, 8, 16)), x), x)
  jax.eval_shape(lambda x: _init(UNet((20, 20, 1), features=(4, 8, 16)), x), x)


@pytest.mark.parametrize('name', ['unet', 'segae', 'vae_unet', 'segnet'])
def test_bad_option_errors(name):
  x = jax.ShapeDtypeStruct((1, 16, 16, 1), jnp.float32)

  def init(**fields):
    model = models.build({'name': name, 'features': (8, 16), **fields}, (16, 16, 1))
    return jax.eval_shape(lambda x: _init(model, x), x)

  init(norm='group', group_norm_groups=4)  # Valid: passes.
  with pytest.raises(UserInputError, match=r"config.model.norm 'layer'; known: batch, group, none"):
    init(norm='layer')
  with pytest.raises(UserInputError, match='group_norm_groups=3'):
    init(norm='group', group_norm_groups=3)
  with pytest.raises(UserInputError, match='config.model.dropout'):
    init(dropout=1.5)
  if name == 'segnet':  # SegNet upsamples with pooling indices; it has no upsample field.
    with pytest.raises(UserInputError, match='has no field'):
      init(upsample='resize')
  else:
    with pytest.raises(UserInputError,
                       match="config.model.upsample 'bilinear'; known: transpose, resize"):
      init(upsample='bilinear')


def test_unet_family_is_the_models_with_a_unet_encoder():
  for name in ('unet', 'segae', 'unet_ae', 'vae_unet', 'segnet', 'ae'):
    model = models.build({'name': name}, (64, 64, 1))
    assert models.is_unet_family(model) == (name != 'segnet' and name != 'ae'), name
    assert models.is_unet_family(model) == isinstance(model, models.UNetBase)
    if models.is_unet_family(model):
      variables = jax.eval_shape(lambda x: _init(model, x),
                                 jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32))
      assert 'level0' in variables['params']['encoder']


# The model interface: encode -> (features, skips), decode -> outputs, __call__ = both.
# Each case's parameter and batch-statistics tree (sorted 'path shape' lines) was recorded from
# the models before encode/decode existed (SegNet was then one @nn.compact __call__); its count
# and sha256 prefix must not change, or checkpoints and recorded state digests stop matching.
INTERFACE_CASES = {
    'unet': ({'name': 'unet', 'features': (4, 8, 16), 'num_classes': 3}, 56, '9f7eeb69faae01d3'),
    'unet_group_resize_dropout': (
        {'name': 'unet', 'features': (4, 8, 16), 'norm': 'group', 'group_norm_groups': 2,
         'upsample': 'resize', 'dropout': 0.3, 'num_classes': 3}, 36, 'f3c57975cd70028d'),
    'segae': ({'name': 'segae', 'features': (4, 8, 16), 'num_classes': 3, 'dropout': 0.2}, 82,
              '04bd8887389232db'),
    'unet_ae': ({'name': 'unet_ae', 'features': (4, 8, 16), 'dropout': 0.1}, 56,
                'dd57898bb8fd9c64'),
    'vae_unet': ({'name': 'vae_unet', 'features': (4, 8, 16), 'num_classes': 3,
                  'latent_channels': 5, 'dropout': 0.2}, 90, '76f081139d844e5b'),
    'segnet': ({'name': 'segnet', 'features': (4, 8), 'num_classes': 3, 'dropout': 0.25}, 42,
               '13d2c63551228f4b'),
    'segnet_nearest_group': (
        {'name': 'segnet', 'features': (4, 8, 16), 'num_classes': 3, 'norm': 'group',
         'group_norm_groups': 2, 'pooling_indices': False}, 38, 'f41ea011ca30824f'),
}
# Which outputs read the skips (the rest must ignore them exactly).
READS_SKIPS = {'unet': {'seg_logits'}, 'unet_group_resize_dropout': {'seg_logits'},
               'segae': {'seg_logits'}, 'unet_ae': set(), 'vae_unet': {'seg_logits'},
               'segnet': {'seg_logits'}, 'segnet_nearest_group': set()}
RNGS = {'reparam': jax.random.PRNGKey(5), 'dropout': jax.random.PRNGKey(6)}


def _interface_case(case):
  model = models.build(INTERFACE_CASES[case][0], SHAPE)
  x = _images()
  return model, _init(model, x), x


def _tree_lines(variables):
  return sorted(f'{jax.tree_util.keystr(path)} {tuple(leaf.shape)}'
                for path, leaf in jax.tree_util.tree_leaves_with_path(variables))


@pytest.mark.parametrize('case', sorted(INTERFACE_CASES))
def test_parameter_tree_is_the_recorded_one(case):
  config, count, digest = INTERFACE_CASES[case]
  model = models.build(config, SHAPE)
  x = jax.ShapeDtypeStruct((2,) + SHAPE, jnp.float32)
  lines = _tree_lines(jax.eval_shape(lambda x: _init(model, x), x))
  assert len(lines) == count
  assert hashlib.sha256('\n'.join(lines).encode()).hexdigest()[:16] == digest, lines
  if config['name'] == 'segnet':  # The names SegNet's compact __call__ gave automatically.
    assert "['params']['enc_level0']['block0']['conv']['kernel'] (3, 3, 2, 4)" in lines
    assert "['params']['dec_level1']['block1']['conv']['kernel'] (3, 3, 8, 4)" in lines
    assert "['params']['head']['kernel'] (1, 1, 4, 3)" in lines


def _halves(model, variables, x):
  """(outputs, updated variables) of apply(x) and of decode(*encode(x)), train mode, same keys."""
  mutable = ['batch_stats'] if 'batch_stats' in variables else []
  full, full_stats = model.apply(variables, x, True, rngs=RNGS, mutable=mutable)
  (features, skips), stats = model.apply(variables, x, True, method='encode', rngs=RNGS,
                                         mutable=mutable)
  halves, halves_stats = model.apply({**variables, **stats}, features, skips, True,
                                     method='decode', rngs=RNGS, mutable=mutable)
  return (full, full_stats), (halves, halves_stats)


@pytest.mark.parametrize('case', sorted(INTERFACE_CASES))
def test_call_is_decode_of_encode(case):
  """In train mode (batch statistics and dropout in use; eval mode runs the same code)."""
  model, variables, x = _interface_case(case)
  (full, full_stats), (halves, halves_stats) = _halves(model, variables, x)
  assert set(halves) == set(full)
  for key in full:
    np.testing.assert_array_equal(halves[key], full[key], err_msg=key)
  assert jax.tree.structure(halves_stats) == jax.tree.structure(full_stats)
  for a, b in zip(jax.tree.leaves(halves_stats), jax.tree.leaves(full_stats)):
    np.testing.assert_array_equal(a, b)
  features, skips = model.apply(variables, x, method='encode')
  levels = len(model.features) - (0 if isinstance(model, SegNet) else 1)  # Pools.
  assert len(skips) == levels
  for i, skip in enumerate(skips):  # Finest first, before each level's pool.
    assert skip.shape == (2, 16 // 2**i, 16 // 2**i, model.features[i])
  assert features.shape[-1] == model.features[-1]


@pytest.mark.parametrize('case', sorted(INTERFACE_CASES))
def test_decode_reads_the_features_and_skips_it_is_given(case):
  """Replacing the features changes every output; zeroing the skips changes exactly the outputs
  whose decoder reads them (a U-Net's segmentation, SegNet's with pooling indices)."""
  model, variables, x = _interface_case(case)
  features, skips = model.apply(variables, x, method='encode')
  decode = lambda f, s: model.apply(variables, f, s, method='decode', rngs=RNGS)
  base = decode(features, skips)
  halved = decode(0.5 * features, skips)
  no_skips = decode(features, [jnp.zeros_like(s) for s in skips])
  for key in base:
    assert float(jnp.abs(halved[key] - base[key]).max()) > 1e-6, key
    changed = float(jnp.abs(no_skips[key] - base[key]).max())
    assert (changed > 1e-6) == (key in READS_SKIPS[case]), (key, changed)
