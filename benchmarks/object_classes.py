"""How well the object classes of segae_jax.tools.objects match the garment classes:
`python -m benchmarks.object_classes --coder=runs/default [--tfds_dir=DIR] [--seeds=0,1,2]`.

The label-free pixel head of tools.pixel_head learns the classes that ObjectCodes gives the likely
single objects, so their agreement with the true classes bounds it. Per seed, ObjectCodes (the
`objects` block of configs/unsup_objects.py, its seed set) is fitted on the 10,000 training
scenes as the unsupervised command fits it; the likely single objects of scenes 9,000-9,499 are
then scored: each object's true class is the majority of its mask pixels (read only here), and
the clusters are matched one to one to the classes (Hungarian) for the accuracy and mIoU over
objects. For reference, the same mixture on the coder's codes of the Fashion-MNIST test items it
was trained on (their labels read only to score). Prints one JSON line per seed; writes them to
--output (default benchmarks/results/object_classes_<date>.jsonl).
"""
import argparse
import os
import sys
from typing import Dict, List

import numpy as np

from benchmarks import label_efficiency
from benchmarks.common import ROOT, dated_ledger, emit

SCORED = (9000, 10000)  # The scenes whose objects are scored, as the baselines' parameters were.


def scene_objects(codes, images: np.ndarray, masks: np.ndarray):
  """(code [n, d], reconstruction error [n], size in pixels [n], true class [n] 0..9, scene index
  [n]) of every object the ObjectCodes `codes` finds in the scenes (images float32 [N, h, w, 1],
  masks [N, h, w])."""
  from segae_jax.tools import objects
  vectors, errors, sizes, truth, where = [], [], [], [], []
  for start in range(0, len(images), 500):
    maps = codes.find(images[start:start + 500])
    z, e = codes.codes(codes.windows(images[start:start + 500], maps))
    vectors.append(z)
    errors.append(e)
    sizes.append(objects.object_sizes(maps))
    for k, ids in enumerate(maps):
      for i in range(1, int(ids.max()) + 1):
        counts = np.bincount(masks[start + k][ids == i].ravel(), minlength=11)[1:]
        truth.append(int(counts.argmax()))
        where.append(start + k)
  return (np.concatenate(vectors), np.concatenate(errors), np.concatenate(sizes),
          np.array(truth), np.array(where))


def matched(truth: np.ndarray, clusters_: np.ndarray) -> Dict[str, float]:
  """Hungarian accuracy and mIoU of object clusters 0..9 against true classes 0..9."""
  from segae_jax.tools import clusters
  confusion = np.zeros((10, 10), np.int64)
  np.add.at(confusion, (truth, clusters_), 1)
  scores = clusters.hungarian_scores(confusion)
  return {'accuracy': scores['pixel_accuracy'], 'miou': scores['miou']}


def measure(coder_workdir: str, tfds_dir: str, seeds: List[int]) -> List[Dict]:
  from sklearn import mixture
  from configs import unsup_objects
  from segae_jax import data
  from segae_jax.data import scenes
  from segae_jax.tools import common, latents, objects
  coder = latents.LatentModel(common.load_run(coder_workdir, 'latest'))
  builder = scenes.prepare(scenes.ScenesConfig(num_train=10000, num_test=2000, seed=0),
                           tfds_dir=tfds_dir)
  train = scenes.load_examples(builder, 'train').__getitems__(list(range(10000)))
  images = np.stack([e['image'] for e in train]).astype(np.float32) / 255.0
  masks = np.stack([e['segmentation'] for e in train])
  dataset = data.build(coder.run.config.data)
  items = coder.encode_split(dataset.test, dataset.preprocess, 1000, 0).mean
  labels = np.asarray(dataset.test.__getitems__(np.arange(len(dataset.test)))['label'])
  results = []
  for seed in seeds:
    config = unsup_objects.get_config().objects
    config.seed = seed
    codes = objects.ObjectCodes(coder, config)
    codes.fit([images[s:s + 500] for s in range(0, len(images), 500)], None)
    vectors, errors, sizes, truth, where = scene_objects(codes, images, masks)
    single = objects.likely_singles(errors, sizes, config.single_quantile,
                                    config.single_min_pixels)  # The fit's singles.
    scored = single & (where >= SCORED[0]) & (where < SCORED[1])
    classes = codes.classes(vectors) - 1
    reference = mixture.GaussianMixture(config.num_clusters, covariance_type='full',
                                        n_init=config.mixture_inits, random_state=seed)
    emit(results, {'seed': seed, 'coder': os.path.abspath(coder_workdir),
                   'scored_singles': int(scored.sum()),
                   'singles': matched(truth[scored], classes[scored]),
                   'fashion_mnist_items': matched(labels, reference.fit_predict(items))})
  return results


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--coder', required=True, help='AE or VAE workdir (configs/default.py).')
  parser.add_argument('--tfds_dir', default=os.path.expanduser('~/tensorflow_datasets'))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--output', default=dated_ledger('object_classes'))
  args = parser.parse_args(argv)
  sys.path.insert(0, ROOT)  # `configs` as the repository's.
  results = measure(args.coder, args.tfds_dir, [int(s) for s in args.seeds.split(',') if s])
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  label_efficiency.write_jsonl(args.output, results)  # Staged and renamed, each row dated.


if __name__ == '__main__':
  main()
