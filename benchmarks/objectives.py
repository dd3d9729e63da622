"""Sanity figures of the training objectives (JSON lines; `python -m benchmarks.objectives
--workdir=DIR`): every run is a plain `python train.py` into its own workdir under DIR, so a
finished run is read back, not repeated, and an interrupted one resumes from its checkpoint when
the command is run again.

Figures:
  objective/<run>      fashion_mnist_scenes with 5% of the masks (500 scenes, seed 0's subset),
                       the other 9,500 training scenes the pool where a method uses one; the
                       configs as shipped, --steps steps, 16 labelled scenes per step in every
                       run (the baselines at batch 16, the pool methods 16 + 16): test mIoU,
                       pixel accuracy, mean Dice at the final step, train time, steps/s, and for
                       the teacher the fraction of confident pool pixels at every log step.
                       Runs: unet_500 / segae_500 (the 500 alone, labeled_only), segae_joint
                       (the supervised objective with the pool: joint reconstruction),
                       masked_rec, denoising (SegAE), fixmatch (U-Net), pretrain (unet_ae,
                       masked reconstruction on all 10,000 images, no masks) -> finetune (U-Net
                       from its encoder on the 500).
  bn_pool/<variant>/seed<k>  Why a pool alone could cost accuracy with BatchNorm: the SegAE with
                       alpha = 0 (no loss on the pool) on scenes written as folders (500
                       labelled, 9,500 unlabelled), 2 labelled scenes per step, --bn_steps
                       steps: alone (batch 2), with 6 pool scenes in every batch (batch 8) as
                       this code trains it (each part its own BatchNorm pass), and the same with
                       the code before the objective seam (one pass over the mixed batch; a
                       checkout of BEFORE_SEAM, made with git archive); then both again with the
                       pool's images shifted (half contrast, brighter background: a pool from
                       another source than the labelled and test images).

One training at a time (several XLA processes on few cores are slower than their sum).
"""
import argparse
import json
import os
import subprocess
from typing import Dict, List

import numpy as np

from benchmarks.common import ROOT, dated_ledger
from benchmarks.own_data import emit, train, write_scenes_folders

BEFORE_SEAM = '6efdd2e'   # The last commit whose step was one pass over the whole batch.
LABELED = ['--config.labeled_fraction=0.05']
POOL = LABELED + ['--config.data.unlabeled_per_batch=16', '--config.batch_size=32']
ALONE = LABELED + ['--config.labeled_only=True', '--config.batch_size=16']
RUNS = {
    'unet_500': ('unet_scenes', ALONE),
    'segae_500': ('segae_scenes', ALONE),
    'segae_joint': ('segae_scenes', POOL),
    'masked_rec': ('masked_rec_scenes', POOL),
    'denoising': ('denoising_scenes', POOL),
    'fixmatch': ('fixmatch_scenes', POOL),
    'pretrain': ('pretrain_scenes', []),
    'finetune': ('finetune_scenes', ALONE),
}


def logged(workdir: str, key: str) -> List[List[float]]:
  """[[step, value], ...] of a train metric in the run's metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [[r['step'], r[key]] for r in map(json.loads, f) if key in r]


def objective_figures(lines, output: str, workdir: str, steps: int) -> None:
  tfds = f'--config.data.tfds_dir={os.path.join(workdir, "tfds")}'
  common = [tfds, f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps}',
            f'--config.checkpoint_every_steps={min(400, steps)}']
  for name, (config, overrides) in RUNS.items():
    run_dir = os.path.join(workdir, 'objectives', name)
    extra = [f'--config.init_from={os.path.join(workdir, "objectives", "pretrain")}'] \
        if name == 'finetune' else []
    results = train(config, run_dir, *common, *overrides, *extra)
    test = results['test']
    figure = {'figure': f'objective/{name}', 'config': config, 'overrides': overrides,
              'steps': results['step'], 'train_time_s': results['train_time_s'],
              'steps_per_s': results['step'] / results['train_time_s'],
              'train_images_per_s': results['train_images_per_s']}
    if 'miou' in test:
      figure.update(miou=test['miou'], pixel_accuracy=test['pixel_accuracy'],
                    mean_dice=test['mean_dice'])
    else:
      figure['test_loss'] = test['loss']
    if name == 'fixmatch':
      figure['confident_fraction'] = logged(run_dir, 'train/confident_fraction')
    emit(lines, output, figure)


def old_checkout(workdir: str) -> str:
  """The code of BEFORE_SEAM, unpacked once (git archive) into workdir/before_seam."""
  target = os.path.join(workdir, 'before_seam')
  if not os.path.isfile(os.path.join(target, 'train.py')):
    os.makedirs(target, exist_ok=True)
    archive = subprocess.run(['git', '-C', ROOT, 'archive', BEFORE_SEAM], capture_output=True,
                             check=True).stdout
    subprocess.run(['tar', '-x', '-C', target], input=archive, check=True)
  return target


def shifted_pool(unlabeled: str) -> str:
  """The pool's images at half their contrast on a brighter background (x / 2 + 100; as if
  taken by another microscope or exposure), written once beside the pool."""
  from PIL import Image
  target = unlabeled.rstrip('/') + '_shifted'
  if os.path.isfile(os.path.join(target, 'done')):
    return target
  for folder, _, names in os.walk(unlabeled):
    for name in names:
      image = np.asarray(Image.open(os.path.join(folder, name)), np.float32)
      out = os.path.join(target, os.path.relpath(folder, unlabeled), name)
      os.makedirs(os.path.dirname(out), exist_ok=True)
      Image.fromarray((image / 2 + 100).astype(np.uint8)).save(out)
  open(os.path.join(target, 'done'), 'w').close()
  return target


def bn_figures(lines, output: str, workdir: str, seeds: List[int], steps: int) -> None:
  paths = write_scenes_folders(os.path.join(workdir, 'scenes_folders'))
  folders = [f'--config.data.images_dir={paths["images"]}',
             f'--config.data.masks_dir={paths["masks"]}',
             f'--config.data.class_names_file={paths["class_names_file"]}',
             '--config.data.num_classes=11', '--config.data.channels=1',
             '--config.data.image_size=(64, 64)', '--config.data.split=folders',
             '--config.data.augment.crop_min_scale=1.0', '--config.data.augment.brightness=0.0',
             '--config.data.augment.contrast=0.0', '--config.alpha=0.0',
             f'--config.num_train_steps={steps}', f'--config.eval_every_steps={steps}',
             f'--config.checkpoint_every_steps={steps}', '--config.eval_batch_size=200',
             f'--config.data.tfds_dir={os.path.join(workdir, "tfds_folders")}']
  pool = [f'--config.data.unlabeled_dir={paths["unlabeled"]}',
          '--config.data.unlabeled_per_batch=6', '--config.batch_size=8']
  alone = ['--config.data.unlabeled_dir=', '--config.data.unlabeled_per_batch=0',
           '--config.batch_size=2']
  shifted = [a.replace(paths['unlabeled'], shifted_pool(paths['unlabeled'])) for a in pool]
  variants = {'alone': (alone, ROOT), 'pool_separate_passes': (pool, ROOT),
              'pool_one_pass_before_seam': (pool, old_checkout(workdir)),
              'shifted_pool_separate_passes': (shifted, ROOT),
              'shifted_pool_one_pass_before_seam': (shifted, old_checkout(workdir))}
  scores: Dict[str, List[float]] = {v: [] for v in variants}
  for seed in seeds:
    for variant, (args, root) in variants.items():
      run_dir = os.path.join(workdir, 'bn_pool', f'{variant}_seed{seed}')
      results = train('segae_folder_semisup', run_dir, *folders, *args, f'--config.seed={seed}',
                      root=root)
      test = results['test']
      emit(lines, output, {'figure': f'bn_pool/{variant}/seed{seed}', 'miou': test['miou'],
                           'pixel_accuracy': test['pixel_accuracy'], 'steps': results['step'],
                           'train_time_s': results['train_time_s']})
      scores[variant].append(test['miou'])
  for variant, mious in scores.items():
    emit(lines, output, {'figure': f'bn_pool/{variant}', 'miou_mean': float(np.mean(mious)),
                         'miou_sd': float(np.std(mious, ddof=1)) if len(mious) > 1 else None,
                         'seeds': len(mious), 'steps': steps})


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='Datasets and runs go here.')
  parser.add_argument('--only', default='objectives,bn_pool')
  parser.add_argument('--steps', type=int, default=1200)
  parser.add_argument('--bn_steps', type=int, default=600)
  parser.add_argument('--seeds', default='0,1,2', help='Seeds of the bn_pool figures.')
  parser.add_argument('--output', default=dated_ledger('objectives'))
  args = parser.parse_args(argv)
  lines: List[Dict] = []
  os.makedirs(args.workdir, exist_ok=True)
  if 'objectives' in args.only.split(','):
    objective_figures(lines, args.output, args.workdir, args.steps)
  if 'bn_pool' in args.only.split(','):
    bn_figures(lines, args.output, args.workdir, [int(s) for s in args.seeds.split(',')],
               args.bn_steps)


if __name__ == '__main__':
  main()
