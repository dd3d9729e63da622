"""Clusters of codes whose classes are known, matched back by the Hungarian algorithm, and the
classical partitions clustered the same way (segae_jax.tools.clusters, .partitions)."""
import numpy as np

from segae_jax.inference import scoring
from segae_jax.tools import clusters, partitions


def test_kmeans_and_matching_recover_known_classes_under_any_cluster_order():
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
  truth = np.repeat(np.arange(3), 50)
  codes = centres[truth] + rng.normal(0, 0.5, (150, 2)).astype(np.float32)
  found = clusters.assign(codes, clusters.fit_kmeans(codes, 3, 20, seed=1))
  # Cluster ids are arbitrary: a permutation of the classes, which the matching undoes.
  assert len(set(zip(truth, found))) == 3
  result = clusters.hungarian_scores(scoring.confusion_counts(truth, found, 3, 3))
  assert result['miou'] == 1.0 and result['pixel_accuracy'] == 1.0
  np.testing.assert_array_equal(np.asarray(result['assignment'])[found], truth)


def test_one_swapped_code_costs_what_a_hand_count_says():
  truth = np.array([0, 0, 0, 1, 1, 1])
  found = np.array([2, 2, 1, 1, 1, 1])   # Cluster 2 is class 0, cluster 1 class 1.
  result = clusters.hungarian_scores(scoring.confusion_counts(truth, found, 2, 3))
  # Class 0: tp 2, predicted 2, truth 3 -> 2/3; class 1: tp 3, predicted 4, truth 3 -> 3/4.
  assert result['per_class_iou'] == [2 / 3, 3 / 4]
  assert result['assignment'] == [-1, 1, 0]
  assert result['pixel_accuracy'] == 5 / 6


def test_standardizer_gives_each_block_its_weight_whatever_its_width():
  rng = np.random.default_rng(0)
  blocks = {'wide': rng.normal(3, 5, (4000, 16)), 'narrow': rng.normal(-1, 0.1, (4000, 1))}
  s = clusters.Standardizer({'wide': 1.0, 'narrow': 2.0, 'off': 0.0})
  s.fit(blocks)
  x = s.transform(blocks)
  assert x.shape == (4000, 17)
  # Expected squared distance of a block to its mean = weight^2.
  assert abs((x[:, :16] ** 2).sum(1).mean() - 1.0) < 0.05
  assert abs((x[:, 16:] ** 2).sum(1).mean() - 4.0) < 0.2


def test_partitions_of_two_flat_halves_cluster_into_the_halves():
  images = np.zeros((4, 16, 16, 1), np.float32)
  images[:, :, 8:] = 1.0              # Left half 0, right half 1, in every image.
  for method, params in (('slic', {'n_segments': 4, 'compactness': 0.1}),
                         ('felzenszwalb', {'scale': 1.0, 'sigma': 0.0, 'min_size': 4})):
    method_ = partitions.PartitionClustering(method, params, {'colour': 1.0}, 2, 10, 0)
    method_.fit([images[:2]], np.random.default_rng(0))
    regions = method_.regions(images[2:])
    truth = np.broadcast_to((np.arange(16) >= 8)[None, None, :], (2, 16, 16)).astype(int)
    result = clusters.hungarian_scores(scoring.confusion_counts(truth, regions, 2, 2))
    assert result['miou'] == 1.0, method
