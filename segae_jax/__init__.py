"""segae_jax: autoencoder-based image segmentation research code in JAX/Flax.

Submodules are importable on their own, e.g. `from segae_jax import models, losses`; the Python
API for segmenting images with a trained model is `segae_jax.Segmenter` (segae_jax/api.py).

A user's own method, loss term, model, view or dataset is registered by name with the decorators
below, in a module that config.plugins names (segae_jax/plugins.py; docs/api.md):

  @segae_jax.register_objective('mymethod')   # training.objectives.OBJECTIVES
  @segae_jax.register_loss('myterm')          # losses.LOSSES
  @segae_jax.register_model('mynet')          # models.MODELS
  @segae_jax.register_view('myview')          # data.views.VIEWS
  @segae_jax.register_dataset('mydata')       # data.DATASETS

A name that is taken raises UserInputError (one line naming the kind and the name).
"""
import importlib

__version__ = '0.1.0'

# {decorator: (module, registry)}: each is that registry's `register`, imported on first use.
_REGISTERS = {
    'register_objective': ('segae_jax.training.objectives', 'OBJECTIVES'),
    'register_loss': ('segae_jax.losses', 'LOSSES'),
    'register_model': ('segae_jax.models', 'MODELS'),
    'register_view': ('segae_jax.data.views', 'VIEWS'),
    'register_dataset': ('segae_jax.data', 'DATASETS'),
}


def __getattr__(name: str):
  # The registries on first use, so `import segae_jax` stays light (no JAX).
  if name in _REGISTERS:
    module, registry = _REGISTERS[name]
    return getattr(importlib.import_module(module), registry).register
  # Segmenter on first use, so `import segae_jax` stays light (no JAX, no OpenCV).
  if name == 'Segmenter':
    from segae_jax.api import Segmenter  # pylint: disable=import-outside-toplevel
    return Segmenter
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
