"""The layer factories (segae_jax.models.layers.Layers): made and validated once in models.build,
and reaching every convolution, dense layer and norm of a model."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from segae_jax import models
from segae_jax.errors import UserInputError
from segae_jax.models import conv_ops, layers
from segae_jax.models.unet import UNet

SHAPE = (8, 8, 2)
SEG_MODELS = ['unet', 'segae', 'unet_ae', 'vae_unet', 'segnet']
FIELDS = {'ae': {'latent_dim': 4, 'hidden_dim': 8}, 'vae': {'latent_dim': 4, 'hidden_dim': 8},
          'vae_unet': {'latent_channels': 3}}
RNGS = {'params': jax.random.PRNGKey(0), 'reparam': jax.random.PRNGKey(1),
        'dropout': jax.random.PRNGKey(2)}
X = jax.ShapeDtypeStruct((2,) + SHAPE, jnp.float32)


def _build(name, **from_data):
  return models.build({'name': name, 'features': (4, 8), **FIELDS.get(name, {})}, SHAPE,
                      num_classes=3, **from_data)


def _shapes(model):
  """(variables, outputs) of an init and an eval-mode apply, as shapes only (no compute)."""
  variables = jax.eval_shape(lambda x: model.init(RNGS, x), X)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, rngs=RNGS), variables, X)
  return variables, outputs


def _calls(model, variables, kinds):
  """[(module, output)] of every __call__ of a module of `kinds` in an eval-mode apply."""
  seen = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and isinstance(context.module, kinds):
      seen.append((context.module, out))
    return out

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, rngs=RNGS), variables, X)
  return seen


def _count(tree, key):
  return sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(tree)
             if jax.tree_util.keystr(path).endswith(f"['{key}']"))


@pytest.mark.parametrize('name', SEG_MODELS)
def test_norm_settings_are_validated_once_in_build(name, monkeypatch):
  calls = []
  real = layers.validate_norm
  monkeypatch.setattr(layers, 'validate_norm', lambda *a: calls.append(a) or real(*a))
  model = _build(name, norm_axis_name=None)
  assert len(calls) == 1
  assert model.layers == layers.Layers(norm_kind='batch', group_norm_groups=8)
  _shapes(model)  # setup (init, then apply) uses the layers build made, checking nothing again.
  assert len(calls) == 1


@pytest.mark.parametrize('name', SEG_MODELS)
@pytest.mark.parametrize('fields,message', [
    ({'norm': 'layer'}, "unknown config.model.norm 'layer'; known: batch, group, none"),
    ({'norm': 'group', 'group_norm_groups': 3},
     r'config.model.features \(4, 8\) must all be divisible by config.model.group_norm_groups=3 '
     r'for norm=group \(not: \[4, 8\]\)'),
    ({'norm': 'group', 'group_norm_groups': 0}, 'config.model.group_norm_groups must be >= 1'),
])
def test_bad_norm_settings_fail_in_build_with_one_line(name, fields, message):
  with pytest.raises(UserInputError, match=message) as error:
    models.build({'name': name, 'features': (4, 8), **fields}, SHAPE)  # No init needed.
  assert '\n' not in str(error.value)


def test_a_model_constructed_directly_validates_its_norm_at_setup():
  model = UNet(SHAPE, features=(4, 8), norm='layer')
  assert model.layers is None
  with pytest.raises(UserInputError, match="unknown config.model.norm 'layer'"):
    _shapes(model)
  # Without a norm error it makes the same layers models.build would.
  built = models.build({'name': 'unet', 'features': (4, 8)}, SHAPE)
  direct = UNet(SHAPE, features=(4, 8))
  assert jax.tree.structure(_shapes(direct)) == jax.tree.structure(_shapes(built))


@pytest.mark.parametrize('name', SEG_MODELS + ['ae', 'vae'])
@pytest.mark.parametrize('impl', ['xla', 'matmul_grad'])
def test_dtype_and_conv_impl_reach_every_layer(name, impl):
  model = _build(name, dtype=jnp.bfloat16, conv_impl=impl)
  variables, outputs = _shapes(model)
  convs = _calls(model, variables, (nn.Conv, conv_ops.ConvTranspose, nn.Dense))
  # Every layer with a kernel ran once, and each was made by the model's factories.
  assert len(convs) == _count(variables['params'], 'kernel') > 0
  expected_conv_fn = conv_ops.conv_general_dilated if impl == 'matmul_grad' else None
  for module, out in convs:
    assert module.dtype == jnp.bfloat16 and out.dtype == jnp.bfloat16, module.name
    if isinstance(module, nn.Conv):
      assert module.conv_general_dilated is expected_conv_fn, module.name
    elif isinstance(module, conv_ops.ConvTranspose):
      assert module.impl == impl, module.name
  assert all(v.dtype == jnp.bfloat16 for k, v in outputs.items() if k.endswith('logits'))
  # Parameters stay float32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('name', SEG_MODELS)
@pytest.mark.parametrize('norm', ['batch', 'group'])
def test_norm_settings_reach_every_norm(name, norm):
  model = models.build({'name': name, 'features': (4, 8), 'norm': norm, 'group_norm_groups': 2},
                       SHAPE, norm_axis_name='devices', dtype=jnp.bfloat16)
  variables, _ = _shapes(model)
  norms = _calls(model, variables, (nn.BatchNorm, nn.GroupNorm))
  assert len(norms) == _count(variables['params'], 'scale') > 0
  for module, out in norms:
    assert module.dtype == jnp.bfloat16 and out.dtype == jnp.bfloat16, module.name
    if norm == 'batch':
      assert isinstance(module, nn.BatchNorm), module.name
      assert (module.axis_name, module.momentum, module.epsilon) == ('devices', 0.9, 1e-5)
      assert module.use_running_average  # Eval mode.
    else:
      assert isinstance(module, nn.GroupNorm), module.name
      assert (module.num_groups, module.epsilon) == (2, 1e-5)
