"""config.compute_dtype: bfloat16/float16 compute with float32 parameters, and loss scaling.

Tolerances (measured on the reference models: bfloat16 first-step loss within 5e-4 of float32
for vae_fmnist, 2e-4 for unet64; after 20 steps 0.4% and 1.3%): the tests allow 2e-3 on the first
step and 3% after ten.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from segae_jax import losses, models, training
from segae_jax.training import objectives, validation
from segae_jax.errors import UserInputError


def _vae_run(tfds_dir, fashion_mnist, dtype, loss_scale=128.0, steps=10, scaled=False):
  """`steps` Adam steps of the default VAE in compute dtype `dtype` on one fixed real batch;
  config.loss_scale=`loss_scale` (used only by float16, as in training, unless `scaled`)."""
  config = small_config(tfds_dir, compute_dtype=dtype, loss_scale=loss_scale)
  config.learning_rate, config.schedule, config.warmup_steps = 1e-3, 'constant', 0
  model = training.build_model(config, (28, 28, 1))  # As training builds it from the config.
  state = training.create_train_state(config, model, (28, 28, 1), jax.random.PRNGKey(0))
  scale = loss_scale if scaled else training.loss_scale_for(config)
  step = jax.jit(functools.partial(training.train_step, objective=objectives.plain(config),
                                   loss_scale=scale))
  batch = fashion_mnist.preprocess(fashion_mnist.train.__getitems__(np.arange(64)), None)
  # The compute dtype is really used: activations (here the decoder's logits) in it.
  outputs = model.apply({'params': state.params}, batch['image'][:2],
                        rngs={'reparam': jax.random.PRNGKey(0)})
  assert outputs['rec_logits'].dtype == jnp.dtype(dtype)
  losses_, grad_norms = [], []
  for _ in range(steps):
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses_.append(float(metrics['loss']))
    grad_norms.append(float(metrics['grad_norm']))
    assert float(metrics['nonfinite']) == 0.0
  return state, np.array(losses_), np.array(grad_norms)


# About 10 s: with the long checks of `make test-faults` (CI runs it); the compute dtype's use is
# checked in the default suite (test_layers.py).
@pytest.mark.faults
def test_reduced_precision_loss_within_tolerance_of_float32(tfds_dir, fashion_mnist):
  _, loss32, _ = _vae_run(tfds_dir, fashion_mnist, 'float32')
  state16, loss16, _ = _vae_run(tfds_dir, fashion_mnist, 'bfloat16')
  assert abs(loss16[0] / loss32[0] - 1) < 2e-3, (loss16[0], loss32[0])
  assert loss16[0] != loss32[0]  # Rounded in bfloat16: not the float32 computation.
  assert np.all(np.abs(loss16 / loss32 - 1) < 3e-2), (loss16, loss32)
  assert loss16[-1] < 0.9 * loss16[0]   # it trains
  # Master weights and optimizer state stay float32.
  for leaf in jax.tree.leaves((state16.params, state16.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  # float16 with the default loss scale (1024 would overflow this pixel-summed loss).
  _, loss_f16, _ = _vae_run(tfds_dir, fashion_mnist, 'float16', steps=5)
  assert np.all(np.abs(loss_f16 / loss32[:5] - 1) < 3e-2), (loss_f16, loss32)


def test_loss_scale_is_undone_on_the_gradients(tfds_dir, fashion_mnist):
  # The gradients are divided by the scale again: the same gradient norms (a missing division
  # would make them 128x; Adam alone would hide it, being invariant to the gradient's scale).
  _, loss_plain, norms_plain = _vae_run(tfds_dir, fashion_mnist, 'float32', steps=3)
  _, loss_scaled, norms_scaled = _vae_run(tfds_dir, fashion_mnist, 'float32', loss_scale=128.0,
                                          steps=3, scaled=True)
  np.testing.assert_allclose(loss_scaled, loss_plain, rtol=1e-6)
  np.testing.assert_allclose(norms_scaled, norms_plain, rtol=1e-5)


@pytest.mark.slow
def test_unet_bfloat16_outputs_and_loss():
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 16, 16, 1))
  seg = jax.random.randint(jax.random.PRNGKey(1), (4, 16, 16), 0, 3)
  loss_fn = losses.make_loss_fn({'seg_ce': 1.0})
  values = {}
  for dtype in ('float32', 'bfloat16'):
    model = models.build({'name': 'unet', 'features': (8, 16)}, (16, 16, 1), num_classes=3,
                         dtype=jnp.dtype(dtype))
    variables = jax.jit(model.init)(jax.random.PRNGKey(2), x)
    out, _ = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))(
        variables, x)
    assert out['seg_logits'].dtype == jnp.dtype(dtype)
    batch = {'image': x, 'segmentation': seg}
    values[dtype] = float(loss_fn(training.float32_outputs(out), batch)[0])
  assert abs(values['bfloat16'] / values['float32'] - 1) < 2e-3, values


@pytest.mark.parametrize('key,value,message', [
    ('compute_dtype', 'float64', 'config.compute_dtype must be one of float32, bfloat16, float16'),
    ('loss_scale', 0.0, 'config.loss_scale must be > 0, got 0.0'),
])
def test_bad_mixed_precision_config(tfds_dir, key, value, message):
  config = small_config(tfds_dir)
  config[key] = value
  with pytest.raises(UserInputError, match=message):
    validation.validate_config(config)


def test_loss_scale_only_for_float16(tfds_dir):
  config = small_config(tfds_dir)
  assert training.loss_scale_for(config) == 1.0
  config.compute_dtype = 'float16'
  assert training.loss_scale_for(config) == config.loss_scale == 128.0


@pytest.mark.slow
def test_train_and_evaluate_bfloat16_close_to_float32(tmp_path, tfds_dir):
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config = small_config(tfds_dir, compute_dtype=dtype)
    results[dtype] = training.train_and_evaluate(config, str(tmp_path / dtype))
  f32, b16 = results['float32']['test'], results['bfloat16']['test']
  assert abs(b16['loss'] / f32['loss'] - 1) < 1e-2, (b16, f32)
