"""Unsupervised segmentation of fashion_mnist_scenes by k-means on encoder features:
  python -m segae_jax.tools.unsupervised --workdir=runs/ae_scenes --config=configs/unsup_scenes.py

The workdir holds a trained U-Net-family autoencoder (configs/ae_scenes.py: no label seen). Not a
training config: it sets the clustering only. Override fields with --config.<key>=<value>.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.split = 'test'            # Images segmented and scored ('train' or 'test').
  config.max_images = 0            # 0 = the whole split.
  config.num_clusters = 11         # k; = the scenes' 11 classes, so matching is one to one.
  # The methods scored, in the table's order (segae_jax.tools.unsupervised.METHODS; the object
  # methods need an AE or VAE run for their codes: configs/unsup_objects.py).
  config.methods = ('autoencoder', 'baseline_pixels', 'slic', 'felzenszwalb')
  config.write_regions = 'autoencoder'  # Whose region maps are written per image.
  config.levels = (0, 1, 2, 3)     # Encoder levels (0 = full resolution, 3 = the bottleneck).
  # Block weights: each block (one per level, colour, position) adds weight^2 to the expected
  # squared distance between pixels, whatever its number of channels.
  config.feature_weight = 1.0
  config.colour_weight = 0.0
  config.position_weight = 0.0
  # The raw-pixel baseline, clustered the same way on the same images.
  config.baseline = ml_collections.ConfigDict({'colour_weight': 1.0, 'position_weight': 1.0})
  # Classical partitions (scikit-image's parameters), each segment clustered on the raw-pixel
  # baseline's blocks; chosen over a small grid by their matched mIoU on training scenes
  # 9,000-9,499 (their masks read for the baselines' benefit only; docs/tools.md).
  config.partitions = ml_collections.ConfigDict({
      'slic': {'n_segments': 50, 'compactness': 0.05, 'sigma': 0.5},
      'felzenszwalb': {'scale': 2.0, 'sigma': 0.5, 'min_size': 30},
  })
  config.fit_images = 500          # Training images whose pixels fit k-means (no labels read).
  config.fit_pixels_per_image = 256
  config.kmeans_iterations = 30
  config.batch_size = 50
  config.num_pictures = 16         # Images drawn into regions.png and written as region maps.
  return config
