"""How much a mask is worth: a paired, multi-seed label-efficiency benchmark of the training
methods (`python -m benchmarks.label_efficiency --workdir=DIR`; JSON lines, a Markdown table and a
learning-curve PNG).

Protocol (Oliver et al., "Realistic Evaluation of Deep Semi-Supervised Learning Algorithms",
NeurIPS 2018, Sec. 3: one implementation, one tuning budget, equal steps, the final step):
  data    fashion_mnist_scenes written as folders (images/, masks/): the 10,000 training scenes,
          of which config.labeled_fraction (1% = 100, 5% = 500) keep their masks, drawn from
          config.seed (data.dataset.labeled_subset), so every arm of one seed learns from the
          same subset; the other scenes are the unlabelled pool where an arm uses one; the 2,000
          test scenes.
  arms    unet        configs/folder.py, supervised, today's augmentation (flips);
          unet_strong configs/strong_folder.py: the same with the strong view and CutMix on the
                      labelled images (objective 'supervised_strong');
          segae_joint configs/segae_folder_semisup.py: joint reconstruction of every image;
          rec         the better on the tuning split of masked_rec_folder.py / denoising_folder.py
                      (both joint);
          fixmatch    configs/fixmatch_folder.py: EMA teacher, threshold, CutMix.
          Every arm: --steps optimizer steps, 16 labelled scenes per step (+ 16 pool scenes for
          the arms with a pool), the configs' learning rate and schedule, seed k's
          initialisation and subset, the scenes configs' augmentation (flips) as the weak view.
  tuning  before the grid, one seed (TUNE_SEED; TUNE_SEEDS for more) of a separate subset on a
          separate split: the first 9,000 training scenes are its training images, the last
          1,000 its validation images (never the test split), 5% of the masks; TUNING lists the
          candidates, run for --tune_steps (the teacher's for --steps: TUNED_AT_GRID_LENGTH);
          the best validation mIoU of each group (the mean over its seeds) sets the grid's
          settings. Its runs and their cost are reported.
          unet_views checks the reference's weak view at --steps over 3 seeds (flips against
          flips + scale-crop): every arm takes scale-crop if it helps the reference by more
          than WEAK_VIEW_MARGIN (weak_view), its runs then under runs_flips_scale_crop/.
  figures tune/<group>/<candidate>  validation mIoU, steps, train time, seed.
          run/<fraction>/<arm>/seed<k>  test mIoU at the final step, pixel accuracy, mean Dice,
          train time, and the learning curve [[step, test mIoU], ...].
          arm/<fraction>/<arm>  mean, sd over seeds; the paired difference to unet: mean and
          its 95% interval (t over the seeds both arms finished); the wall time of the
          arm's fastest run (compilation and evaluations included).
          long/<fraction>/<arm>/seed<k>  after the grid, a few arms at --long_steps: where the
          reference's learning curve flattens, and whether a gap holds at a longer budget.

Resumable: every run is a plain `python train.py` into its own workdir under DIR; a finished run
(results.json) is read back, an unfinished one resumes from its last checkpoint, so the grid
survives being stopped and started again. A grid continued on a machine without the tuning
runs' folders takes their rows from the committed ledger (--tuned_from=FILE.jsonl) and may run
some arms alone (--arms without unet), to be paired with the runs measured before by
benchmarks.weak_views --recorded. The JSON lines, the table and the PNG are rewritten
from every finished run each time. One training at a time (several XLA processes on few cores are
slower than their sum); nothing else should run while it does, as it reports wall times.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from benchmarks.common import RESULTS, ROOT, write_output
from segae_jax import cli
from segae_jax.training import writers

FRACTIONS = {'5pct': 0.05, '1pct': 0.01}
LABELED_PER_STEP = 16
TUNE_SEED = 100
REFERENCE = 'unet'

# name: (config, uses a pool, overrides); an arm with a TUNING group takes its winner's config
# and overrides ('rec': masked_rec_folder or denoising_folder).
ARMS: Dict[str, Tuple[str, bool, Tuple[str, ...]]] = {
    # Cross-entropy alone, as the grid ran before folder.py's default became CE + Dice.
    'unet': ('folder', False, ('--config.loss.dice=0.0',)),
    'unet_strong': ('strong_folder', False, ()),
    'segae_joint': ('segae_folder_semisup', True, ()),
    'rec': ('', True, ()),
    'fixmatch': ('fixmatch_folder', True, ()),
    # The ceiling: every training scene's mask, the reference's model, steps and batch.
    'full': ('folder', False, ('--config.loss.dice=0.0',)),
    'unimatch': ('unimatch_folder', True, ()),
    # UniMatch + the SegAE's joint reconstruction (one model, reconstruction on top).
    'unimatch_rec': ('unimatch_segae_folder', True, ()),
    # Masked-autoencoder pretraining on every training image (PRETRAIN), then UniMatch from
    # its encoder.
    'mae_unimatch': ('unimatch_folder', True, ()),
}
# Arms that start from a pretraining run of their seed: (config, overrides). It reads the
# grid's training images without masks (image_folder over images/train) and runs PRETRAIN_STEPS.
PRETRAIN = {'mae_unimatch': ('pretrain_folder', ())}
PRETRAIN_STEPS = 2000
# Arms that take another tuning group's winner (the recipe they build on).
TUNED_AS = {'unimatch_rec': 'unimatch', 'mae_unimatch': 'unimatch'}
# Arms whose labelled share is not the grid's fraction: one run per seed, whatever --fractions
# holds (filed under the first), paired with every fraction's reference.
ARM_FRACTION = {'full': 1.0}

# The strong view suited to the scenes (issue 36): multiplicative brightness and gamma only,
# noise that leaves empty pixels empty, blur_sigma scaled from a 512-pixel image.
DATA_VIEWS = ('--config.data.strong_augment.contrast=0.0',
              '--config.data.strong_augment.noise_mode=signal',
              '--config.data.strong_augment.blur_reference_size=512')
BALANCED = ('--config.objective_params.unlabeled_loss.balanced_ce=1.0',)
ADAPTIVE = ('--config.objective_params.threshold_mode=class_adaptive',)
DICE = ('--config.objective_params.unlabeled_loss.dice=1.0',)

# Every arm's weak view: flips (run_args), or flips and folder.py's scale-crop, which all arms
# take when it helps the reference by more than WEAK_VIEW_MARGIN (mIoU, the mean over the
# unet_views runs' TUNE_SEEDS): the reference's seed-to-seed sd at 5%, set on 2026-12-07 before
# the second and third seeds ran (the first gave +0.009).
WEAK_VIEWS = {'flips': (), 'flips_scale_crop': ('--config.data.augment.crop_min_scale=0.7',)}
WEAK_VIEW_MARGIN = 0.010

# Tuning: group -> {candidate: (arm config, overrides)}; the first candidate of a group is the
# config's default. Each group's best candidate sets the overrides of its arm in the grid.
TUNING: Dict[str, Dict[str, Tuple[str, Tuple[str, ...]]]] = {
    'unet': {'default': ('folder', ('--config.loss.dice=0.0',))},
    'segae_joint': {'alpha0.5': ('segae_folder_semisup', ()),
                    'alpha0.2': ('segae_folder_semisup', ('--config.alpha=0.2',))},
    'rec': {'masked_rec': ('masked_rec_folder', ()),
            'masked_rec_ratio0.4': ('masked_rec_folder',
                                    ('--config.objective_params.mask_ratio=0.4',)),
            'denoising': ('denoising_folder', ())},
    'fixmatch': {'default': ('fixmatch_folder', ()),
                 'threshold0.8': ('fixmatch_folder', ('--config.objective_params.threshold=0.8',)),
                 'threshold0.7': ('fixmatch_folder', ('--config.objective_params.threshold=0.7',)),
                 'ema0': ('fixmatch_folder', ('--config.objective_params.ema_decay=0.0',))},
    # UniMatch as published, then the strong view suited to the data (no contrast about the
    # mean, noise proportional to the signal, UniMatch's blur scaled from its 512-pixel crops),
    # then on top of it one change each: a class-balanced unlabelled term, class-adaptive
    # thresholds, the confident pixels' Dice beside the cross-entropy (UniMatch on ACDC).
    # (A fourth, balanced + adaptive, was dropped once balanced alone had lost 15 points.)
    # The reference's weak view at the grid's length (WEAK_VIEWS): flips, and flips with
    # folder.py's scale-crop, which every arm takes only if it helps the reference (issue 36;
    # weak_view). The group's winner is not an arm's setting by itself (TUNING_ARM).
    'unet_views': {view: ('folder', ('--config.loss.dice=0.0', *overrides))
                   for view, overrides in WEAK_VIEWS.items()},
    'unimatch': {'published': ('unimatch_folder', ()),
                 'data_views': ('unimatch_folder', DATA_VIEWS),
                 'data_views_balanced': ('unimatch_folder', DATA_VIEWS + BALANCED),
                 'data_views_adaptive': ('unimatch_folder', DATA_VIEWS + ADAPTIVE),
                 'data_views_dice': ('unimatch_folder', DATA_VIEWS + DICE)},
}
# Groups tuned at the grid's length (--steps) instead of --tune_steps: the teacher's term acts
# only once the teacher is confident, which a 500-step run barely reaches (measured: <= 1% of
# the pool's pixels at tau 0.95 by step 500, so its candidates could not differ).
TUNED_AT_GRID_LENGTH = ('fixmatch', 'unet_views')
# Groups that tune another arm than their name (run when that arm is among --arms).
TUNING_ARM = {'unet_views': REFERENCE}
# Groups tuned over several seeds, compared on their mean with a paired interval: the
# reference's weak view decides every arm's, and its candidates differed by 0.9 points on one
# seed, less than the reference's seed-to-seed sd (1.0 points at 5%).
TUNE_SEEDS = {'unet_views': (TUNE_SEED, 1, 2)}
# Groups tuned at --tune_steps_long: long enough for the student's own pseudo-labels to act,
# shorter than the grid (a candidate costs about 4 supervised runs of as many steps).
TUNED_LONG = ('unimatch',)


def save_png(path: str, array: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def write_layout(root: str, scenes: Mapping, train: Sequence[int],
                 test: Tuple[str, Sequence[int]]) -> Dict[str, str]:
  """Scenes as folders: root/images/{train,test}/*.png and root/masks/... (same stems), written
  once (root/done marks a finished layout). `train`: indices into the training scenes; `test`:
  (split, indices) of the test folder's scenes."""
  paths = {'images': os.path.join(root, 'images'), 'masks': os.path.join(root, 'masks'),
           'class_names_file': os.path.join(root, 'classes.txt')}
  if os.path.isfile(os.path.join(root, 'done')):
    return paths
  for folder, (split, indices) in (('train', ('train', train)), ('test', test)):
    source = scenes[split]
    examples = source.__getitems__(np.asarray(indices))
    for name, array in zip(indices, examples['image'][..., 0]):
      save_png(os.path.join(paths['images'], folder, f'{split}{name:05d}.png'), array)
    for name, array in zip(indices, examples['segmentation']):
      save_png(os.path.join(paths['masks'], folder, f'{split}{name:05d}.png'), array)
  with open(paths['class_names_file'], 'w') as f:
    f.write('\n'.join(scenes['class_names']) + '\n')
  open(os.path.join(root, 'done'), 'w').close()
  return paths


def write_layouts(workdir: str, num_train: int, num_test: int,
                  num_validation: int) -> Dict[str, Dict[str, str]]:
  """{'grid': every training scene + the test scenes, 'tune': the first num_train -
  num_validation training scenes + the last num_validation as its test folder}."""
  from segae_jax import data  # pylint: disable=import-outside-toplevel
  built = data.build({'name': 'fashion_mnist_scenes', 'num_train': num_train,
                      'num_test': num_test, 'tfds_dir': os.path.join(workdir, 'tfds_scenes'),
                      'cache': 'memory'})
  scenes = {'train': built.train, 'test': built.test, 'class_names': built.class_names}
  fit = num_train - num_validation
  return {'grid': write_layout(os.path.join(workdir, 'grid_data'), scenes, range(num_train),
                               ('test', range(num_test))),
          'tune': write_layout(os.path.join(workdir, 'tune_data'), scenes, range(fit),
                               ('train', range(fit, num_train)))}


def run_args(paths: Mapping[str, str], tfds_dir: str, fraction: float, seed: int, steps: int,
             pool: bool, eval_every: int, labeled_per_step: int = LABELED_PER_STEP) -> List[str]:
  """The overrides every run shares (data, subset, seed, schedule), then its batch."""
  args = [f'--config.data.images_dir={paths["images"]}',
          f'--config.data.masks_dir={paths["masks"]}',
          f'--config.data.class_names_file={paths["class_names_file"]}',
          '--config.data.num_classes=11', '--config.data.channels=1',
          '--config.data.image_size=(64, 64)', '--config.data.split=folders',
          '--config.data.unlabeled_dir=',
          # The scenes configs' augmentation as every arm's weak view: flips only.
          '--config.data.augment.crop_min_scale=1.0', '--config.data.augment.brightness=0.0',
          '--config.data.augment.contrast=0.0', '--config.eval_batch_size=200',
          f'--config.labeled_fraction={fraction}', f'--config.seed={seed}',
          f'--config.num_train_steps={steps}', f'--config.eval_every_steps={eval_every}',
          f'--config.checkpoint_every_steps={eval_every}',
          f'--config.data.tfds_dir={tfds_dir}']
  if pool:
    # The pool's hidden masks ride along for the pseudo-label figures (no loss reads them).
    return args + ['--config.data.monitor_hidden_masks=True',
                   f'--config.data.unlabeled_per_batch={labeled_per_step}',
                   f'--config.batch_size={2 * labeled_per_step}']
  return args + ['--config.labeled_only=True', f'--config.batch_size={labeled_per_step}']


def pretrain_args(paths: Mapping[str, str], tfds_dir: str, seed: int, steps: int,
                  eval_every: int) -> List[str]:
  """The overrides of a pretraining run (image_folder, no masks): the grid's training images
  (images/train; images/test its evaluation), the weak view's flips, seed k."""
  return [f'--config.data.images_dir={paths["images"]}', '--config.data.split=folders',
          '--config.data.channels=1', '--config.data.image_size=(64, 64)',
          '--config.data.augment.crop_min_scale=1.0', f'--config.seed={seed}',
          f'--config.num_train_steps={steps}', f'--config.eval_every_steps={eval_every}',
          f'--config.checkpoint_every_steps={eval_every}', '--config.eval_batch_size=200',
          f'--config.data.tfds_dir={tfds_dir}']


def train(config: str, workdir: str, overrides: Sequence[str],
          env: Optional[Mapping[str, str]] = None) -> Dict:
  """python train.py --config=configs/<config>.py (or `config` itself, a path ending in .py)
  --workdir=workdir overrides...: the run's
  results.json, read back when it exists (a finished run is not repeated; an unfinished one
  resumes from its last checkpoint). The wall seconds of every invocation, compilation and
  evaluations included, add up in workdir/wall_time.json (train_time_s of results.json counts
  the last process's steps only)."""
  results = finished(workdir)
  if results is not None:
    return results
  spec = config if config.endswith('.py') else f'configs/{config}.py'
  cmd = [sys.executable, os.path.join(ROOT, 'train.py'), f'--config={spec}',
         f'--workdir={workdir}', *overrides]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
  os.makedirs(workdir, exist_ok=True)
  wall = wall_time(workdir) + time.perf_counter() - start
  with open(os.path.join(workdir, 'wall_time.json'), 'w') as f:
    json.dump({'wall_s': wall}, f)
  if proc.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
  print(f'# {config} -> {workdir}: {wall:.0f} s', flush=True)
  return finished(workdir)


def wall_time(workdir: str) -> float:
  """The wall seconds spent on a run so far (0 before its first invocation)."""
  path = os.path.join(workdir, 'wall_time.json')
  if not os.path.isfile(path):
    return 0.0
  with open(path) as f:
    return float(json.load(f)['wall_s'])


def curve(workdir: str, key: str = 'test/miou') -> List[List[float]]:
  """[[step, value], ...] of an evaluation metric in a run's metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [[r['step'], r[key]] for r in map(json.loads, f) if key in r]


def finished(workdir: str) -> Optional[Dict]:
  """The run's results.json, or None when it has not finished."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_row(figure: str, workdir: str, results: Mapping) -> Dict:
  test = results['test']
  return {'figure': figure, 'miou': test['miou'], 'pixel_accuracy': test['pixel_accuracy'],
          'mean_dice': test['mean_dice'], 'steps': results['step'],
          'train_time_s': results['train_time_s'], 'wall_s': wall_time(workdir),
          'resumed_from_step': results.get('resumed_from_step'),
          'curve': curve(workdir), 'pseudo_labels': pseudo_labels(workdir)}


PSEUDO = ('confident_fraction', 'pseudo_accuracy', 'pseudo_coverage')


def pseudo_labels(workdir: str) -> Optional[Dict]:
  """What a pseudo-labelling run's teacher taught, from its last training log line that has
  the per-class figures (training.objectives.helpers.pseudo_label_metrics, logged as the mean
  over the log window): {'step', <figure>: [per class], 'pseudo_accuracy_all'}; None for a run
  without them."""
  last = None
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for record in map(json.loads, f):
      if 'train/pseudo_coverage/0' in record:
        last = record
  if last is None:
    return None
  out = {'step': last['step'], 'pseudo_accuracy_all': last['train/pseudo_accuracy']}
  for name in PSEUDO:
    count = sum(1 for k in last if k.startswith(f'train/{name}/'))
    out[name] = [last[f'train/{name}/{c}'] for c in range(count)]
  return out


def paired_interval(arm: Sequence[float], reference: Sequence[float],
                    confidence: float = 0.95) -> Dict[str, float]:
  """The mean paired difference arm - reference over seeds and its two-sided t interval:
  mean(d) +- t_{(1 + confidence) / 2, n - 1} * sd(d) / sqrt(n), d the per-seed differences
  (Student's t; needs n >= 2 pairs, else the bounds are NaN)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  d = np.asarray(arm, np.float64) - np.asarray(reference, np.float64)
  n = len(d)
  if n < 2:
    return {'mean': float(d.mean()) if n else float('nan'), 'low': float('nan'),
            'high': float('nan'), 'pairs': n}
  half = stats.t.ppf((1 + confidence) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
  return {'mean': float(d.mean()), 'low': float(d.mean() - half),
          'high': float(d.mean() + half), 'pairs': n}


def gap_closed(arm: Sequence[float], reference: Sequence[float],
               ceiling: Sequence[float]) -> Optional[float]:
  """The fraction of the reference's gap to the all-masks ceiling that an arm closes, over the
  seeds all three ran: mean(arm - reference) / mean(ceiling - reference) (None without such a
  seed, or without a gap)."""
  if not arm:
    return None
  gap = float(np.mean(np.subtract(ceiling, reference)))
  return float(np.mean(np.subtract(arm, reference))) / gap if gap > 0 else None


def fastest(rows: Iterable[Mapping]) -> float:
  """The smallest wall time of runs that were not resumed (a killed invocation's seconds are
  not counted; NaN when every run was): the best estimate of a run's cost on idle cores
  (timeit's rule), should some run have shared them."""
  whole = [r['wall_s'] for r in rows if not r.get('resumed_from_step')]
  return float(min(whole)) if whole else float('nan')


def summarise(rows: Iterable[Mapping], kind: str = 'run') -> List[Dict]:
  """arm/<fraction>/<arm> rows from the run/<fraction>/<arm>/seed<k> rows (kind 'run', the
  grid), or long_arm/... rows from the long/... rows (kind 'long', the longer runs)."""
  by_arm: Dict[Tuple[str, str], Dict[int, Mapping]] = {}
  for row in rows:
    row_kind, fraction, arm, seed = row['figure'].split('/')
    if row_kind != kind:
      continue
    by_arm.setdefault((fraction, arm), {})[int(seed[len('seed'):])] = row
  out = []
  order = lambda item: (list(FRACTIONS).index(item[0][0]),
                        list(ARMS).index(item[0][1]) if item[0][1] in ARMS else len(ARMS))
  ceiling = next((seeds for (_, arm), seeds in by_arm.items() if arm in ARM_FRACTION), {})
  for (fraction, arm), seeds in sorted(by_arm.items(), key=order):
    mious = [seeds[s]['miou'] for s in sorted(seeds)]
    reference = by_arm.get((fraction, REFERENCE), {})
    paired = sorted(set(seeds) & set(reference))
    with_ceiling = sorted(set(paired) & set(ceiling))
    out.append({
        'figure': f'{"arm" if kind == "run" else "long_arm"}/{fraction}/{arm}',
        'seeds': sorted(seeds),
        'miou_mean': float(np.mean(mious)),
        'miou_sd': float(np.std(mious, ddof=1)) if len(mious) > 1 else None,
        'difference_to_unet': paired_interval([seeds[s]['miou'] for s in paired],
                                              [reference[s]['miou'] for s in paired]),
        'gap_closed': gap_closed([seeds[s]['miou'] for s in with_ceiling],
                                 [reference[s]['miou'] for s in with_ceiling],
                                 [ceiling[s]['miou'] for s in with_ceiling]),
        'wall_s_min': fastest(seeds.values())})
  return out


def write_jsonl(path: str, rows: Iterable[Mapping]) -> None:
  """All rows, each dated, replacing the file at once (common.write_output: a stopped harness
  leaves the previous one; a failed write is one line and exit 2)."""
  date = time.strftime('%Y-%m-%d')
  write_output(path, ''.join(json.dumps({'date': date, **row}) + '\n' for row in rows))


def save_figure(fig, path: str) -> None:
  """A matplotlib figure as PNG at `path`, written whole or not at all (writers.write_bytes)."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  writers.write_bytes(path, buffer.getvalue())


def read_tuning(path: str) -> List[Dict]:
  """The tune/... rows of an earlier ledger of this harness (--tuned_from: a grid continued on
  a machine that does not have the tuning runs' folders).

  Raises:
    ValueError: the file holds no tune/... row.
  """
  with open(path) as f:
    rows = [row for row in map(json.loads, f) if row.get('figure', '').startswith('tune/')]
  if not rows:
    raise ValueError(f'{path}: no tune/<group>/<candidate> rows')
  return rows


def tuning_summary(tune_rows: Iterable[Mapping]) -> Dict[str, Dict[str, Dict]]:
  """{group: {candidate: {'miou': mean validation mIoU over the seeds every candidate of the
  group ran, 'seeds': those seeds, 'wall_s': the candidate's runs' wall seconds, summed,
  'difference': the paired difference to the group's first candidate with its 95% interval}}}
  (a row without a 'seed' is TUNE_SEED's, as the ledger wrote them before TUNE_SEEDS)."""
  runs: Dict[str, Dict[str, Dict[int, Mapping]]] = {}
  for row in tune_rows:
    _, group, candidate = row['figure'].split('/')
    runs.setdefault(group, {}).setdefault(candidate, {})[row.get('seed', TUNE_SEED)] = row
  out: Dict[str, Dict[str, Dict]] = {}
  for group, candidates in runs.items():
    seeds = sorted(set.intersection(*[set(by_seed) for by_seed in candidates.values()]))
    first = next(iter(candidates.values()))
    out[group] = {candidate: {
        'miou': float(np.mean([by_seed[s]['miou'] for s in seeds])) if seeds else float('nan'),
        'seeds': seeds, 'wall_s': float(sum(r['wall_s'] for r in by_seed.values())),
        'difference': paired_interval([by_seed[s]['miou'] for s in seeds],
                                      [first[s]['miou'] for s in seeds])}
                  for candidate, by_seed in candidates.items()}
  return out


def best_candidates(tune_rows: Iterable[Mapping]) -> Dict[str, str]:
  """{group: its candidate with the highest validation mIoU (the mean over the seeds every
  candidate of the group ran)}."""
  return {group: max(candidates, key=lambda c, cs=candidates: cs[c]['miou'])
          for group, candidates in tuning_summary(tune_rows).items()}


def weak_view(tune_rows: Iterable[Mapping], chosen: str = 'auto') -> str:
  """Every grid arm's weak view (a WEAK_VIEWS name): `chosen` (--weak_view) unless 'auto';
  then the best unet_views candidate if its mean validation mIoU beats flips' by more than
  WEAK_VIEW_MARGIN, else 'flips' (also when the group did not run)."""
  if chosen != 'auto':
    return chosen
  views = tuning_summary(tune_rows).get('unet_views')
  if not views:
    return 'flips'
  best = max(views, key=lambda v: views[v]['miou'])
  return best if views[best]['miou'] - views['flips']['miou'] > WEAK_VIEW_MARGIN else 'flips'


def runs_dir(view: str, kind: str = 'runs') -> str:
  """The folder under the workdir of the grid's runs ('runs') or the longer ones ('long') with
  weak view `view`: `kind` itself for flips (where the grid ran before the views were
  compared); another view's runs apart, never read back as flips'."""
  return kind if view == 'flips' else f'{kind}_{view}'


def arm_settings(best: Mapping[str, str]) -> Dict[str, Tuple[str, bool, Tuple[str, ...]]]:
  """{arm: (config, uses a pool, overrides)}: ARMS with the tuned arms' winners.

  Raises:
    RuntimeError: an arm to tune has no tuning result yet (run --only=tune first).
  """
  out = {}
  for arm, (config, pool, overrides) in ARMS.items():
    group = TUNED_AS.get(arm, arm)
    if group in TUNING and group != REFERENCE:
      if group not in best:
        continue  # Not tuned in this workdir (not among --arms).
      _, tuned = TUNING[group][best[group]]
      config = config if arm in TUNED_AS else TUNING[group][best[group]][0]
      overrides = tuple(overrides) + tuple(tuned)
    out[arm] = (config, pool, tuple(overrides))
  return out


class Harness:
  """The tuning runs and the grid over one workdir (see the module doc)."""

  def __init__(self, args: argparse.Namespace, env: Optional[Mapping[str, str]] = None):
    self.args, self.env = args, env
    os.makedirs(args.workdir, exist_ok=True)
    self.layouts = write_layouts(args.workdir, args.num_train, args.num_test,
                                 args.num_validation)

  def run(self, layout: str, config: str, run_dir: str, fraction: float, seed: int,
          steps: int, pool: bool, eval_every: int, overrides: Sequence[str]) -> Dict:
    args = run_args(self.layouts[layout], os.path.join(self.args.workdir, f'tfds_{layout}'),
                    fraction, seed, steps, pool, eval_every, self.args.labeled_per_step)
    return train(config, run_dir, [*args, *overrides, *self.args.override], self.env)

  def tune(self) -> List[Dict]:
    rows, a = [], self.args
    if a.tuned_from:
      return read_tuning(a.tuned_from)
    for group, candidates in TUNING.items():
      arm = TUNING_ARM.get(group, group)
      if arm not in a.arms:
        continue
      for seed in TUNE_SEEDS.get(group, (TUNE_SEED,)):
        for candidate, (config, overrides) in candidates.items():
          run_dir = os.path.join(a.workdir, 'tune', group, candidate if seed == TUNE_SEED
                                 else f'{candidate}_seed{seed}')
          steps = (a.steps if group in TUNED_AT_GRID_LENGTH else
                   a.tune_steps_long if group in TUNED_LONG else a.tune_steps)
          # Checkpointed (and validated) every --eval_every steps, so a stopped long candidate
          # resumes; its figure is still the final step's.
          results = self.run('tune', config, run_dir, FRACTIONS['5pct'], seed, steps,
                             arm != REFERENCE, min(steps, a.eval_every), overrides)
          rows.append({**run_row(f'tune/{group}/{candidate}', run_dir, results), 'seed': seed})
    return rows

  def grid_runs(self) -> List[Tuple[str, str, int]]:
    """(fraction, arm, seed) in the order they run: seed by seed, so that a stopped grid still
    pairs every arm; then the extra seeds of the extra arms."""
    a = self.args
    order = [(f, arm, s) for s in a.seeds for f in a.fractions for arm in a.arms
             if arm not in ARM_FRACTION or f == a.fractions[0]]
    order += [(a.extra_fraction, arm, s) for s in a.extra_seeds for arm in a.extra_arms
              if arm in a.arms]
    return order

  def pretrained(self, arm: str, seed: int) -> Tuple[str, ...]:
    """The overrides that start `arm` from its pretraining run of `seed` (run first, or read
    back), or () for an arm without one."""
    if arm not in PRETRAIN:
      return ()
    a = self.args
    config, overrides = PRETRAIN[arm]
    run_dir = os.path.join(a.workdir, 'pretrain', arm, f'seed{seed}')
    args = pretrain_args(self.layouts['grid'], os.path.join(a.workdir, 'tfds_pretrain'), seed,
                         a.pretrain_steps, a.pretrain_steps)
    train(config, run_dir, [*args, *overrides], self.env)
    return (f'--config.init_from={run_dir}', '--config.init_checkpoint=latest')

  def grid(self, tune_rows: Sequence[Mapping]) -> List[Dict]:
    a, rows = self.args, []
    settings = arm_settings(best_candidates(tune_rows))
    view = weak_view(tune_rows, a.weak_view)
    for fraction, arm, seed in self.grid_runs():
      config, pool, overrides = settings[arm]
      overrides = (*overrides, *WEAK_VIEWS[view], *self.pretrained(arm, seed))
      run_dir = os.path.join(a.workdir, runs_dir(view), fraction, arm, f'seed{seed}')
      results = self.run('grid', config, run_dir, ARM_FRACTION.get(arm, FRACTIONS[fraction]),
                         seed, a.steps, pool, a.eval_every, overrides)
      rows.append(run_row(f'run/{fraction}/{arm}/seed{seed}', run_dir, results))
      self.write(tune_rows, rows)
    return rows

  def long_runs(self, tune_rows: Sequence[Mapping], rows: List[Dict]) -> List[Dict]:
    """After the grid, --long_arms at --long_steps (seeds --long_seeds, --long_fraction): where
    the reference flattens, and whether a gap holds there. Seed by seed, so that a stopped
    harness still pairs every arm."""
    a = self.args
    settings = arm_settings(best_candidates(tune_rows))
    view = weak_view(tune_rows, a.weak_view)
    for seed in a.long_seeds:
      for arm in a.long_arms:
        config, pool, overrides = settings[arm]
        overrides = (*overrides, *WEAK_VIEWS[view])
        run_dir = os.path.join(a.workdir, runs_dir(view, 'long'), a.long_fraction, arm,
                               f'seed{seed}')
        results = self.run('grid', config, run_dir, FRACTIONS[a.long_fraction], seed,
                           a.long_steps, pool, a.eval_every, overrides)
        rows.append(run_row(f'long/{a.long_fraction}/{arm}/seed{seed}', run_dir, results))
        self.write(tune_rows, rows)
    return rows

  def write(self, tune_rows: Sequence[Mapping], rows: Sequence[Mapping]) -> None:
    """The JSON lines, the table and the learning curves of every finished run so far."""
    summary = summarise(rows)
    write_jsonl(self.args.output, [*tune_rows, *rows, *summary, *summarise(rows, 'long')])
    view = weak_view(tune_rows, self.args.weak_view)
    source = 'unet_views, below' if self.args.weak_view == 'auto' else '--weak_view'
    write_output(self.args.table, f'Every arm\'s weak view: {view} ({source}).\n\n' +
                 markdown_table(summary, tune_rows, best_candidates(tune_rows), rows))
    if rows:
      plot_curves(rows, self.args.plot)
      with open(self.layouts['grid']['class_names_file']) as f:
        names = f.read().splitlines()
      plot_pseudo_labels(rows, os.path.splitext(self.args.plot)[0] + '_pseudo_labels.png', names)


def fmt_interval(d: Mapping[str, float]) -> str:
  if not d['pairs']:
    return '–'
  if d['pairs'] < 2:
    return f'{100 * d["mean"]:+.1f} (1 seed)'
  return f'{100 * d["mean"]:+.1f} [{100 * d["low"]:+.1f}, {100 * d["high"]:+.1f}]'


def fmt_difference(row: Mapping, arm: str) -> str:
  """An arm's paired difference to the reference, or '(reference)' for the reference itself."""
  return '(reference)' if arm == REFERENCE else fmt_interval(row['difference_to_unet'])


def fmt_gap(value: Optional[float], arm: str) -> str:
  if arm == REFERENCE or arm in ARM_FRACTION:
    return ''
  return '–' if value is None else f'{100 * value:.0f}%'


def markdown_table(summary: Sequence[Mapping], tune_rows: Sequence[Mapping],
                   best: Mapping[str, str], rows: Sequence[Mapping] = ()) -> str:
  """The grid's table (mIoU in points: mean ± sd over seeds; the paired difference to unet
  with its 95% t interval), the tuning runs' and the longer runs' (in `rows`)."""
  lines = ['| labels | arm | test mIoU (final step) | seeds | Δ to unet, 95% interval | '
           'gap to 100% closed | wall s / run (fastest seed) |', '|---|---|---|---|---|---|---|']
  for row in summary:
    _, fraction, arm = row['figure'].split('/')
    sd = f' ± {100 * row["miou_sd"]:.1f}' if row['miou_sd'] is not None else ''
    lines.append(f'| {100 * FRACTIONS[fraction]:g}% | {arm} | {100 * row["miou_mean"]:.1f}{sd} | '
                 f'{len(row["seeds"])} | '
                 f'{fmt_difference(row, arm)} | '
                 f'{fmt_gap(row.get("gap_closed"), arm)} | {row["wall_s_min"]:.0f} |')
  lines += tuning_table(tune_rows, best)
  long = [r for r in rows if r['figure'].startswith('long/')]
  if long:
    lines += ['| longer runs: labels | arm | seed | steps | test mIoU | wall s |',
              '|---|---|---|---|---|---|']
    for row in long:
      _, fraction, arm, seed = row['figure'].split('/')
      lines.append(f'| {100 * FRACTIONS[fraction]:g}% | {arm} | {seed[len("seed"):]} | '
                   f'{row["steps"]} | {100 * row["miou"]:.1f} | {row["wall_s"]:.0f} |')
    lines += ['', '| longer runs: labels | arm | test mIoU (final step) | seeds | '
              'Δ to unet, 95% interval |', '|---|---|---|---|---|']
    for row in summarise(long, 'long'):
      _, fraction, arm = row['figure'].split('/')
      sd = f' ± {100 * row["miou_sd"]:.1f}' if row['miou_sd'] is not None else ''
      lines.append(f'| {100 * FRACTIONS[fraction]:g}% | {arm} | {100 * row["miou_mean"]:.1f}{sd} | '
                   f'{len(row["seeds"])} | '
                   f'{fmt_difference(row, arm)} |')
  lines += pseudo_label_table(rows)
  return '\n'.join(lines) + '\n'


def tuning_table(tune_rows: Sequence[Mapping], best: Mapping[str, str]) -> List[str]:
  """The tuning runs' lines of the table: per candidate its mean validation mIoU, seeds, and
  where a group ran several seeds, the paired difference to the group's first candidate."""
  lines = ['', '| tuning group | candidate | validation mIoU | seeds | Δ to the first, 95% '
           'interval | wall s | chosen |', '|---|---|---|---|---|---|---|']
  for group, candidates in tuning_summary(tune_rows).items():
    for i, (candidate, row) in enumerate(candidates.items()):
      chosen = 'yes' if best.get(group) == candidate else ''
      difference = fmt_interval(row['difference']) if i and len(row['seeds']) > 1 else ''
      lines.append(f'| {group} | {candidate} | {100 * row["miou"]:.1f} | {len(row["seeds"])} | '
                   f'{difference} | {row["wall_s"]:.0f} | {chosen} |')
  total = sum(r['wall_s'] for r in tune_rows)
  lines.append(f'\nTuning: {len(tune_rows)} runs, {total / 60:.0f} min of these cores.\n')
  return lines


def pseudo_label_summary(rows: Sequence[Mapping]) -> Dict[Tuple[str, str], Dict[str, float]]:
  """{(fraction, arm): the grid runs' pseudo-label figures, mean over seeds}: the confident
  pixels' accuracy, and background (class 0) vs objects (the other classes' mean) coverage
  and accuracy."""
  by_arm: Dict[Tuple[str, str], List[Mapping]] = {}
  for row in rows:
    kind, fraction, arm, _ = row['figure'].split('/')
    if kind == 'run' and row.get('pseudo_labels'):
      by_arm.setdefault((fraction, arm), []).append(row['pseudo_labels'])
  out = {}
  for key, runs in by_arm.items():
    mean = lambda f: float(np.mean([f(r) for r in runs]))
    out[key] = {'accuracy': mean(lambda r: r['pseudo_accuracy_all']),
                'background_coverage': mean(lambda r: r['pseudo_coverage'][0]),
                'object_coverage': mean(lambda r: np.mean(r['pseudo_coverage'][1:])),
                'object_accuracy': mean(lambda r: np.mean(r['pseudo_accuracy'][1:])),
                'seeds': len(runs)}
  return out


def pseudo_label_table(rows: Sequence[Mapping]) -> List[str]:
  """Markdown lines: what each pseudo-labelling arm's teacher taught by the end (percent)."""
  summary = pseudo_label_summary(rows)
  if not summary:
    return []
  lines = ['', '| labels | arm | seeds | confident pixels right | background covered | '
           'objects covered (class mean) | objects right (class mean) |',
           '|---|---|---|---|---|---|---|']
  for (fraction, arm), v in summary.items():
    lines.append(f'| {100 * FRACTIONS[fraction]:g}% | {arm} | {v["seeds"]} | '
                 f'{100 * v["accuracy"]:.1f} | {100 * v["background_coverage"]:.1f} | '
                 f'{100 * v["object_coverage"]:.1f} | {100 * v["object_accuracy"]:.1f} |')
  return lines


def plot_pseudo_labels(rows: Sequence[Mapping], path: str, class_names: Sequence[str]) -> None:
  """Per class, for each pseudo-labelling arm of the grid (mean over seeds): the share of its
  true pixels confidently labelled right (coverage) and of its confident pseudo-labels that
  are right (accuracy)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  by_arm: Dict[str, List[Mapping]] = {}
  for row in rows:
    kind, fraction, arm, _ = row['figure'].split('/')
    if kind == 'run' and row.get('pseudo_labels'):
      by_arm.setdefault(f'{arm} ({100 * FRACTIONS[fraction]:g}%)', []).append(
          row['pseudo_labels'])
  if not by_arm:
    return
  fig, axes = plt.subplots(1, 2, figsize=(13, 4))
  width = 0.8 / len(by_arm)
  x = np.arange(len(class_names))
  for i, (label, runs) in enumerate(by_arm.items()):
    for ax, name in zip(axes, ('pseudo_coverage', 'pseudo_accuracy')):
      ax.bar(x + i * width, np.mean([r[name] for r in runs], axis=0), width, label=label)
  for ax, title in zip(axes, ('of the true pixels: confidently labelled right',
                              'of the confident pseudo-labels: right')):
    ax.set(title=title, ylim=(0, 1))
    ax.set_xticks(x + 0.4 - width / 2, class_names, rotation=45, ha='right', fontsize=8)
    ax.grid(alpha=0.3, axis='y')
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, path)
  plt.close(fig)


def plot_curves(rows: Sequence[Mapping], path: str) -> None:
  """test mIoU against steps, the mean over seeds of each arm: one panel per label fraction
  of the grid, one for the longer runs."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  curves: Dict[Tuple[str, str], Dict[str, List[List[List[float]]]]] = {}
  for row in rows:
    kind, fraction, arm, _ = row['figure'].split('/')
    title = f'{100 * FRACTIONS[fraction]:g}% of the masks'
    if kind == 'long':
      title += f', {row["steps"]} steps'
    curves.setdefault((kind != 'run', title), {}).setdefault(arm, []).append(row['curve'])
  fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
  order = sorted(curves, key=lambda k: (k[0], -float(k[1].split('%')[0])))
  for ax, key in zip(axes[0], order):
    title, arms = key[1], curves[key]
    for arm, runs in arms.items():
      steps = sorted(set.intersection(*[{s for s, _ in run} for run in runs]))
      mean = [np.mean([dict(map(tuple, run))[s] for run in runs]) for s in steps]
      ax.plot(steps, mean, marker='o', label=f'{arm} ({len(runs)} seeds)')
    ax.set(title=title, xlabel='optimizer step', ylabel='test mIoU')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_figure(fig, path)
  plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
  ints = lambda text: [int(s) for s in text.split(',') if s]
  names = lambda text: [s for s in text.split(',') if s]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='Datasets and runs go here.')
  parser.add_argument('--only', choices=['tune', 'grid'], default='grid',
                      help='tune: the tuning runs alone; grid: tuning, then the grid.')
  parser.add_argument('--arms', type=names, default=list(ARMS))
  parser.add_argument('--steps', type=int, default=1000, help='Optimizer steps of a grid run.')
  parser.add_argument('--eval_every', type=int, default=200, help='Learning-curve points.')
  parser.add_argument('--tune_steps', type=int, default=500)
  parser.add_argument('--tune_steps_long', type=int, default=1500,
                      help='The steps of the groups in TUNED_LONG.')
  parser.add_argument('--tuned_from', default='',
                      help='An earlier --output: its tuning rows set the grid, no tuning runs '
                           '(then the reference may be left out of --arms, paired later by '
                           'benchmarks.weak_views --recorded).')
  parser.add_argument('--weak_view', choices=['auto', *WEAK_VIEWS], default='auto',
                      help="Every arm's weak view; auto: the unet_views check's (weak_view).")
  parser.add_argument('--pretrain_steps', type=int, default=PRETRAIN_STEPS)
  parser.add_argument('--labeled_per_step', type=int, default=LABELED_PER_STEP)
  parser.add_argument('--seeds', type=ints, default=[0, 1, 2])
  parser.add_argument('--fractions', type=names, default=list(FRACTIONS))
  parser.add_argument('--extra_seeds', type=ints, default=[3, 4])
  parser.add_argument('--extra_arms', type=names, default=['unet', 'fixmatch'])
  parser.add_argument('--extra_fraction', default='5pct')
  parser.add_argument('--override', action='append', default=[],
                      help='A config override for every run (e.g. a smaller model); repeatable.')
  parser.add_argument('--long_steps', type=int, default=3000,
                      help='After the grid: --long_arms this long (0: none).')
  parser.add_argument('--long_arms', type=names, default=['unet', 'fixmatch'])
  parser.add_argument('--long_fraction', default='5pct')
  parser.add_argument('--long_seeds', type=ints, default=[0, 1, 2])
  parser.add_argument('--num_train', type=int, default=10_000)
  parser.add_argument('--num_test', type=int, default=2_000)
  parser.add_argument('--num_validation', type=int, default=1_000)
  parser.add_argument('--output', default=os.path.join(RESULTS, 'label_efficiency.jsonl'))
  parser.add_argument('--table', default=os.path.join(RESULTS, 'label_efficiency.md'))
  parser.add_argument('--plot', default=os.path.join(ROOT, 'docs', 'img',
                                                     'label_efficiency.png'))
  return check_args(parser, parser.parse_args(argv))


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
  """args, or exit 2 with one line naming the flag and what was expected."""
  unknown = sorted(set(args.fractions + [args.extra_fraction, args.long_fraction]) -
                   set(FRACTIONS))
  if unknown:
    parser.error(f'--fractions: unknown {", ".join(unknown)}; known: {", ".join(FRACTIONS)}')
  unknown = sorted(set(args.arms) - set(ARMS))
  if unknown or (REFERENCE not in args.arms and not args.tuned_from):
    parser.error(f'--arms: unknown {", ".join(unknown) or "none"}; known: {", ".join(ARMS)} '
                 f'(with {REFERENCE}, the reference, unless --tuned_from)')
  if args.tuned_from:
    try:
      read_tuning(args.tuned_from)
    except (OSError, ValueError, AttributeError) as e:
      parser.error(f'--tuned_from={args.tuned_from}: expected a ledger of this harness with '
                   f'tune/... rows ({type(e).__name__}: {e})')
  later = (args.extra_arms if args.extra_seeds else []) + (args.long_arms if args.long_steps
                                                           else [])
  if set(later) - set(args.arms):
    parser.error(f'--extra_arms / --long_arms: {", ".join(sorted(set(later) - set(args.arms)))} '
                 f'not among --arms')
  return args


def main(argv=None, env: Optional[Mapping[str, str]] = None) -> None:
  args = parse_args(argv)
  with cli.user_errors():  # A ledger, table or figure that cannot be written: one line, exit 2.
    run_harness(args, env)


def run_harness(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None) -> None:
  """The tuning (or its ledger read back), then the grid and the longer runs; every finished
  run rewrites the outputs."""
  harness = Harness(args, env)
  tune_rows = harness.tune()  # Read back once done: the grid's settings come from it.
  harness.write(tune_rows, [])
  if args.only == 'grid':
    rows = harness.grid(tune_rows)
    if args.long_steps:
      harness.long_runs(tune_rows, rows)


if __name__ == '__main__':
  main()
