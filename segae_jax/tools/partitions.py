"""Classical region partitions as label-free baselines: SLIC superpixels (Achanta et al., "SLIC
Superpixels Compared to State-of-the-Art Superpixel Methods", TPAMI 2012) and the graph-based
segmentation of Felzenszwalb and Huttenlocher (IJCV 2004), both scikit-image's.

A partition has no class: its segments are clustered into k classes by their mean features (each
segment's mean colour and centroid, the raw-pixel baseline's blocks) with the same k-means as
the other methods, so that the Hungarian matching of segae_jax.tools.clusters scores them alike.
"""
from typing import Dict, Iterable, List, Mapping

import numpy as np

from segae_jax.errors import UserInputError
from segae_jax.tools import clusters

PARTITIONS = ('slic', 'felzenszwalb')


def partition(image: np.ndarray, method: str, params: Mapping) -> np.ndarray:
  """Segments of one image.

  Args:
    image: float32 [height, width, channels] in model units (e.g. [0, 1]).
    method: 'slic' (params n_segments, compactness, sigma) or 'felzenszwalb' (params scale,
      sigma, min_size), passed to skimage.segmentation's function of that name.
    params: the method's keyword arguments.

  Returns:
    int64 [height, width] segment ids 0..n-1, each segment one connected region.

  Raises:
    UserInputError: an unknown method.
  """
  from skimage import segmentation
  channels = image.shape[-1]
  pixels = image[..., 0] if channels == 1 else image
  axis = None if channels == 1 else -1
  if method == 'slic':
    # enforce_connectivity keeps each superpixel one region, as the paper's post-processing does.
    labels = segmentation.slic(pixels.astype(np.float64), channel_axis=axis, start_label=0,
                               enforce_connectivity=True, **dict(params))
  elif method == 'felzenszwalb':
    labels = segmentation.felzenszwalb(pixels.astype(np.float64), channel_axis=axis,
                                       **dict(params))
  else:
    raise UserInputError(f'partition method {method!r}: expected one of {PARTITIONS}')
  # Ids made consecutive from 0 (slic can leave gaps after enforcing connectivity).
  return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def segment_means(image: np.ndarray, segments: np.ndarray) -> Dict[str, np.ndarray]:
  """Per-segment mean features: {'colour': float32 [n, channels], 'position': float32 [n, 2]
  (the centroid's (y, x) in [0, 1])} for segments int [height, width] with ids 0..n-1."""
  h, w, c = image.shape
  ids = segments.reshape(-1)
  count = np.bincount(ids).astype(np.float64)
  count = np.maximum(count, 1.0)
  colour = np.stack([np.bincount(ids, image[..., i].reshape(-1)) for i in range(c)], -1)
  y, x = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing='ij')
  position = np.stack([np.bincount(ids, y.reshape(-1)), np.bincount(ids, x.reshape(-1))], -1)
  return {'colour': (colour / count[:, None]).astype(np.float32),
          'position': (position / count[:, None]).astype(np.float32)}


class PartitionClustering:
  """A partition method whose segments are clustered into `num_clusters` classes.

  Args:
    method: 'slic' or 'felzenszwalb'.
    params: the method's keyword arguments (see `partition`).
    weights: {'colour': w, 'position': w} block weights of the segment features.
    num_clusters, iterations, seed: the k-means.
  """

  def __init__(self, method: str, params: Mapping, weights: Mapping[str, float],
               num_clusters: int, iterations: int, seed: int):
    if method not in PARTITIONS:
      raise UserInputError(f'partition method {method!r}: expected one of {PARTITIONS}')
    self.method, self.params = method, dict(params)
    self.standardizer = clusters.Standardizer(dict(weights))
    self.num_clusters, self.iterations, self.seed = num_clusters, iterations, seed
    self.centres = None

  def _features(self, images: np.ndarray) -> List[Dict[str, np.ndarray]]:
    return [segment_means(image, partition(image, self.method, self.params))
            for image in images]

  def fit(self, image_batches: Iterable[np.ndarray], rng: np.random.Generator) -> None:
    """Fits the k-means on every segment of the images (float32 [b, h, w, c] batches)."""
    del rng  # Every segment is used: there are few per image.
    parts = [f for images in image_batches for f in self._features(images)]
    sample = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    self.standardizer.fit(sample)
    self.centres = clusters.fit_kmeans(self.standardizer.transform(sample), self.num_clusters,
                                       self.iterations, self.seed)

  def regions(self, images: np.ndarray) -> np.ndarray:
    """float32 images [b, h, w, c] -> int64 cluster ids [b, h, w]."""
    out = []
    for image in images:
      segments = partition(image, self.method, self.params)
      labels = clusters.assign(self.standardizer.transform(segment_means(image, segments)),
                               self.centres)
      out.append(labels[segments])
    return np.stack(out)
