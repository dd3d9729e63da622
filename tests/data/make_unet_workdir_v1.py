"""How tests/data/unet_workdir_v1 was written (2026-12-01, before the package restructuring):
a U-Net with BatchNorm trained 2 steps on tiny real scenes, so that tests can check that runs
trained by earlier code still restore. Run from the repository root:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/data/make_unet_workdir_v1.py
(Rewriting it with later code defeats its purpose.)"""
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import numpy as np  # noqa: E402

import conftest  # noqa: E402
from segae_jax.tools import common  # noqa: E402
from segae_jax import training

OUT = os.path.join(ROOT, 'tests', 'data', 'unet_workdir_v1')


def main():
  tfds_dir = tempfile.mkdtemp()
  config = conftest.unet_run_config(tfds_dir, **{
      'model.features': (4, 8), 'num_train_steps': 2, 'eval_every_steps': 2,
      'checkpoint_every_steps': 2, 'data.tfds_dir': ''})
  config.data.tfds_dir = tfds_dir
  shutil.rmtree(OUT, ignore_errors=True)
  training.train_and_evaluate(config, OUT)
  for name in ('tensorboard', 'segmentation.png', 'metrics.jsonl'):
    path = os.path.join(OUT, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  run = common.load_run(OUT, 'latest')
  image = np.random.default_rng(0).random((1,) + run.image_shape, np.float32)
  logits = np.asarray(run.model.apply(run.variables, image)['seg_logits'])
  np.savez(os.path.join(ROOT, 'tests', 'data', 'unet_workdir_v1_expected.npz'), image=image,
           seg_logits=logits)


if __name__ == '__main__':
  main()
