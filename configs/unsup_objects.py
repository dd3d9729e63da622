"""Label-free segmentation of fashion_mnist_scenes by objects and a self-trained pixel head, beside
the encoder's k-means and the classical baselines:
  python -m segae_jax.tools.unsupervised --workdir=runs/ae_scenes \\
      --config=configs/unsup_objects.py --config.objects.workdir=runs/vae

Two label-free runs: the workdir's pixel autoencoder (configs/ae_scenes.py, its pipeline carries
no mask) starts the head's weights; objects.workdir's VAE (configs/default.py, Fashion-MNIST
images, no label read) gives each object's code. The objects are the connected components of the
non-background pixels, classed by a Gaussian mixture on the codes of the components that its
reconstruction says are single objects (segae_jax.tools.objects); the head is trained on
copy-paste scenes of those, then on its own confident classes of the real training scenes
(segae_jax.tools.pixel_head), in head.workdir (default WORKDIR/pixel_head; resumable).
"""
import ml_collections

from configs import unsup_scenes


def get_config() -> ml_collections.ConfigDict:
  config = unsup_scenes.get_config()
  config.methods = ('autoencoder', 'baseline_pixels', 'slic', 'felzenszwalb', 'object_codes',
                    'pixel_head')
  config.write_regions = 'pixel_head'
  config.objects = ml_collections.ConfigDict({
      'workdir': '',              # An AE or VAE run: its code of each object's window.
      'checkpoint': 'latest',
      'fit_images': 0,            # Training images whose objects fit the classes (0: all).
      'num_clusters': 10,         # Object classes; the background is one more.
      'tolerance': 0.0,           # Foreground: off the border's background by more than this.
      'min_pixels': 8,            # Smaller components are background.
      'side': 28,                 # The object's longer side in its window (the VAE's images).
      # The share of the components of >= single_min_pixels pixels, lowest reconstruction error
      # first, taken as single objects (objects.likely_singles).
      'single_quantile': 0.3,
      'single_min_pixels': 24,    # Smaller components (pieces cut off by dark seams) are never.
      'mixture': 'gmm',           # Full-covariance Gaussian mixture (sklearn), or 'kmeans'.
      'mixture_inits': 2,
      'iterations': 30,           # k-means only.
      'seed': 0,
  })
  config.head = ml_collections.ConfigDict({
      'workdir': '',              # Default WORKDIR/pixel_head.
      'config': 'folder',         # The training config of each round, with these overrides:
      'overrides': (('batch_size', 32), ('eval_batch_size', 100), ('loss.dice', 0.0)),
      'steps': 2000,              # Per round.
      'rounds': 2,                # 1: composites only; 2: then its own classes on real scenes.
      'composites': 10000,        # Round 1's training scenes (test: test_composites).
      'test_composites': 200,
      'max_objects': 4,           # Objects per composite: 1..max_objects, uniform.
      'threshold': 0.5,           # Round 2 keeps round 1's object class where p >= this.
      'seed': 0,
      'batch_size': 200,          # Of inference.
  })
  return config
