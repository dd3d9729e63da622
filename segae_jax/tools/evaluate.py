"""Evaluates a trained run on a split:
  python -m segae_jax.tools.evaluate --workdir=DIR [--split=test]

Restores the best checkpoint (highest test mIoU for segmentation runs; the latest otherwise, or
with --checkpoint=latest) and writes <workdir>/eval_<split>.json with every metric, including the
per-class IoU/Dice table, which is also printed.
"""
import os

from absl import flags

from segae_jax import cli
from segae_jax.tools import common

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir (holds config.json and checkpoints/).', 'best',
                          split_help='Split to evaluate.')


def evaluate_run(workdir: str, split: str = 'test', checkpoint: str = 'best'):
  """Returns (and writes to eval_<split>.json) the metrics of the restored run on `split`.

  The evaluation is the one training runs: same key (training.evaluation_key), same data-parallel
  strategy (config.parallel) and batches, so on the devices the run trained on the metrics of its
  final checkpoint equal its results.json exactly. (Under pmap a sampling model draws its noise
  per device: on another device count a VAE's sampled terms change within their noise.)

  Raises:
    UserInputError: not a workdir, no checkpoint, or config.eval_batch_size not divisible by the
      devices present.
  """
  from segae_jax import data, training
  from segae_jax.training import parallel, writers

  run = common.load_run(workdir, checkpoint)
  config = run.config
  parallel.check_batch_divisible(config.eval_batch_size, 'config.eval_batch_size')
  dataset = data.build(config.data)
  strategy = parallel.make_strategy(config.parallel, *training.step_functions(config))
  state = training.TrainState(step=run.step, apply_fn=run.model.apply,
                              params=run.variables['params'], tx=None, opt_state=None,
                              batch_stats=run.variables.get('batch_stats', {}))
  metrics = training.evaluate(strategy, strategy.replicate(state), dataset, config,
                              training.evaluation_key(config.seed), split)
  results = {**common.result_header(workdir, run, model=False), 'split': split,
             'metrics': metrics}
  writers.write_json(os.path.join(workdir, f'eval_{split}.json'), results)
  return results


PER_CLASS_COLUMNS = (('class', '<16'), ('IoU', '7.4f'), ('Dice', '7.4f'), ('pixels', '10d'))


def format_table(metrics) -> str:
  """One line of the scalar metrics (4 decimals), then the per-class table if there is one."""
  lines = [' '.join(f'{k}={v:.4f}' for k, v in metrics.items() if k != 'per_class')]
  if 'per_class' in metrics:
    lines.append(common.format_table(PER_CLASS_COLUMNS, [
        (name, row['iou'], row['dice'], row['pixels'])
        for name, row in metrics['per_class'].items()]))
  return '\n'.join(lines)


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results = evaluate_run(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint)
  print(f'{results["checkpoint"]} checkpoint, step {results["step"]}, split {FLAGS.split}:')
  print(format_table(results['metrics']))
  print(f'wrote {os.path.join(FLAGS.workdir, "eval_" + FLAGS.split + ".json")}')


if __name__ == '__main__':
  cli.run_command(main, define_flags, ['workdir'])
