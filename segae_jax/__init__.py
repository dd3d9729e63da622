"""segae_jax: autoencoder-based image segmentation research code in JAX/Flax.

Submodules are importable on their own, e.g. `from segae_jax import models, losses`.
"""
__version__ = '0.1.0'
