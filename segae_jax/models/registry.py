"""The model registry: models register themselves here under the name configs use."""
from segae_jax.registry import Registry

MODELS = Registry('model')
