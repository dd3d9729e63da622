"""What a semi-supervised step costs next to a supervised one: `python -m benchmarks.step_cost`
(JSON lines, also appended to --output).

Each variant is a real training run's step: its config (fashion_mnist_scenes, 5% of the masks,
the U-Net of unet_scenes.py), set up as train_and_evaluate sets it up (training.loop.setup: the
dataset, the objective's views, the jitted step of the 'jit' strategy on one device), then one
batch of its own input pipeline stepped again and again (the input pipeline's time is left out:
the figure is the compiled step's). Variants:
  supervised_16  the labelled images alone, 16 per step (the label-efficiency reference's step);
  supervised_32  32 labelled images per step: as many images as a semi-supervised step reads;
  supervised_64  64 per step: as many images as a unimatch step's encoder sees (the labelled
                 images, the pool's weak view and its two strong views);
  fixmatch       16 labelled + 16 pool images (configs/fixmatch_scenes.py);
  unimatch       16 + 16 (configs/unimatch_scenes.py: the weak pass with its perturbed-feature
                 decoder, both strong views in one pass);
  unimatch_geometric  the same with the geometric strong views (warps in the step);
  unimatch_segae      the same with the SegAE and its reconstruction term on top.
The variants are timed in turn over --rounds rounds of --steps steps each (so a drift of the
machine falls on all alike); the figure is the median step time over the rounds, with the
ratios to each supervised variant run beside it (supervised_32: the issue's "same number of
images"): the ratio of the medians, and the paired one, the median over rounds of each round's
ratio (which the machine's drift between rounds does not enter).

One process, nothing else running: it reports wall times.
"""
import argparse
import json
import os
import time
from typing import Dict, List

import numpy as np

from benchmarks.common import RESULTS

VARIANTS = ('supervised_16', 'supervised_32', 'supervised_64', 'fixmatch', 'unimatch',
            'unimatch_geometric', 'unimatch_segae')


def variant_config(name: str, tfds_dir: str):
  """The training config of variant `name` (module doc)."""
  # pylint: disable=import-outside-toplevel
  import ml_collections
  from configs import fixmatch_scenes, unet_scenes, unimatch_scenes
  if name.startswith('supervised'):
    config = unet_scenes.get_config()
    config.labeled_fraction, config.labeled_only = 0.05, True
    config.batch_size = int(name.split('_')[1])
  elif name == 'fixmatch':
    config = fixmatch_scenes.get_config()
  else:
    config = unimatch_scenes.get_config()
    config.objective_params.geometric = name == 'unimatch_geometric'
    if name == 'unimatch_segae':
      config.model = ml_collections.ConfigDict({
          'name': 'segae', 'features': (16, 32, 64, 128), 'norm': 'batch',
          'upsample': 'transpose', 'dropout': 0.0, 'seg_skips': True, 'rec_skips': False})
      config.loss = ml_collections.ConfigDict({'seg_ce': 1.0, 'rec_mse_per_pixel': 0.25})
  config.data.tfds_dir = tfds_dir
  config.data.num_workers = 0
  config.parallel = 'jit'
  return config


class Stepper:
  """A variant's compiled step on one fixed batch of its own pipeline."""

  def __init__(self, name: str, tfds_dir: str):
    import jax  # pylint: disable=import-outside-toplevel
    from segae_jax.training import loop, validation  # pylint: disable=import-outside-toplevel
    config, objective = validation.validate_run(variant_config(name, tfds_dir))
    run = loop.setup(config, objective)
    self.name, self.images = name, config.batch_size
    self.strategy, self.rng = run.strategy, jax.random.PRNGKey(1)
    self.state = run.strategy.replicate(run.state)  # As the loop places it (own buffers).
    self.batch = run.strategy.put_batch(next(run.train_iter))
    run.train_iter.close()
    start = time.perf_counter()
    self.step(1)
    self.compile_s = time.perf_counter() - start

  def step(self, count: int) -> float:
    """Runs `count` steps; the median seconds of one."""
    import jax  # pylint: disable=import-outside-toplevel
    times = []
    for _ in range(count):
      start = time.perf_counter()
      self.state, metrics = self.strategy.train_step(self.state, self.batch, self.rng)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(names, tfds_dir: str, rounds: int, steps: int) -> List[Dict]:
  steppers = [Stepper(name, tfds_dir) for name in names]
  for stepper in steppers:
    stepper.step(2)  # Warm-up after compilation.
  times = {s.name: [] for s in steppers}
  for _ in range(rounds):
    for stepper in steppers:
      times[stepper.name].append(stepper.step(steps))
  rows = []
  for stepper in steppers:
    m = float(np.median(times[stepper.name]))
    rows.append({'figure': f'step_cost/{stepper.name}', 'step_s_median': m,
                 'step_s_rounds': times[stepper.name], 'steps_per_s': 1.0 / m,
                 'images_per_step': stepper.images, 'compile_s': stepper.compile_s,
                 **ratios(times, stepper.name)})
  return rows


def ratios(times: Dict[str, List[float]], name: str) -> Dict[str, float]:
  """{'ratio_to_<s>': median of `name`'s round times / median of s's, 'paired_ratio_to_<s>':
  the median over rounds of the round's ratio} for each supervised variant s in `times`
  ({variant: its median step time, one per round, in seconds})."""
  out = {}
  for ref in (v for v in VARIANTS if v.startswith('supervised') and v in times):
    mine, theirs = np.asarray(times[name]), np.asarray(times[ref])
    out[f'ratio_to_{ref}'] = float(np.median(mine) / np.median(theirs))
    out[f'paired_ratio_to_{ref}'] = float(np.median(mine / theirs))
  return out


def main(argv=None) -> None:
  names = lambda text: [s for s in text.split(',') if s]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variants', type=names, default=list(VARIANTS))
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=10, help='Steps per variant and round.')
  parser.add_argument('--tfds_dir', default=os.path.expanduser('~/tensorflow_datasets'))
  parser.add_argument('--output', default=os.path.join(RESULTS, 'step_cost.jsonl'))
  args = parser.parse_args(argv)
  unknown = sorted(set(args.variants) - set(VARIANTS))
  if unknown:
    parser.error(f'--variants: unknown {", ".join(unknown)}; known: {", ".join(VARIANTS)}')
  import jax  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  date = time.strftime('%Y-%m-%d')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                        cwd=root).stdout.strip()
  with open(args.output, 'a') as f:
    for row in measure(args.variants, args.tfds_dir, args.rounds, args.steps):
      row = {'date': date, 'code': code, 'device': jax.devices()[0].device_kind, **row}
      print(json.dumps(row), flush=True)
      f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  main()
