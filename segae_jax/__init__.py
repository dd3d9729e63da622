"""segae_jax: autoencoder-based image segmentation research code in JAX/Flax.

Submodules are importable on their own, e.g. `from segae_jax import models, losses`; the Python
API for segmenting images with a trained model is `segae_jax.Segmenter` (segae_jax/api.py).
"""
__version__ = '0.1.0'


def __getattr__(name: str):
  # Segmenter on first use, so `import segae_jax` stays light (no JAX, no OpenCV).
  if name == 'Segmenter':
    from segae_jax.api import Segmenter  # pylint: disable=import-outside-toplevel
    return Segmenter
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
