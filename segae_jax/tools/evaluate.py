"""Evaluates a trained run on a split:
  python -m segae_jax.tools.evaluate --workdir=DIR [--split=test] [--mode=auto|tile|resize]

Restores the best checkpoint (highest test mIoU for segmentation runs; the latest otherwise, or
with --checkpoint=latest) and writes <workdir>/eval_<split>.json with every metric, including the
per-class IoU/Dice table, which is also printed. For a segmentation model it also holds the
confusion matrix (pixel counts, C[true, predicted]), drawn row-normalised with the class names in
<workdir>/confusion_matrix_<split>.png.

--mode=resize is the evaluation training runs (at the training size). --mode=tile scores a
segmentation model at each image's own resolution, by sliding-window inference against the
stored mask (segmentation scores only: mIoU, Dice, pixel accuracy, per class); --mode=auto
(default) tiles when the split holds images larger than the model's input (a folder dataset
stored at native size), else resizes. Training scores its test split the same way (results.json
'test_resolution': 'native' or 'input'; training.loop.test_metrics), so --mode=auto reproduces a
run's results.json.

With --iw_samples=K a VAE is also scored by the importance-sampled bound on -log p(x) (IWAE,
tools.likelihood; 'iwae_nll' in nats per image, beside 'loss', the run's -ELBO).

With --tta=hflip|flips, --min_component_size=N or --fill_holes (inference.postprocess) every image
goes through predict's path (segae_jax.Segmenter) and the JSON holds the scores with them
('metrics') and without ('metrics_plain'), and the seconds each evaluation took.

eval_<split>.json and confusion_matrix_<split>.png are this tool's files in the run's workdir:
each is written to a temporary file beside it and renamed (tools.outputs), replacing the
previous one; a workdir that cannot be written is refused before the evaluation runs.
"""
import os
import time
from typing import Optional

from absl import flags

from segae_jax import cli
from segae_jax.inference import scoring
from segae_jax.tools import common, confusion, likelihood, outputs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir (holds config.json and checkpoints/).', 'best',
                          split_help='Split to evaluate.')
  flags.DEFINE_integer('batch_size', 32, 'Tiles per forward pass (--mode=tile).')
  flags.DEFINE_integer('iw_samples', None, 'A VAE\'s importance-sampled bound on -log p(x) '
                       '(IWAE) with this many samples per image, e.g. 5000 (nats).')
  flags.DEFINE_integer('iw_images', None, 'Only the first this many images of the split for '
                       '--iw_samples (default: all).')
  common.define_inference_flags()


def evaluate_run(workdir: str, split: str = 'test', checkpoint: str = 'best',
                 inference: common.Inference = common.Inference(), batch_size: int = 32,
                 iw_samples: Optional[int] = None, iw_images: Optional[int] = None):
  """Returns (and writes to eval_<split>.json) the metrics of the restored run on `split`.

  In resize mode the evaluation is the one training runs: same key (training.evaluation_key),
  same data-parallel strategy (config.parallel) and batches, so on the devices the run trained on
  the metrics of its final checkpoint equal its results.json exactly. (Under pmap a sampling
  model draws its noise per device: on another device count a VAE's sampled terms change within
  their noise.) In tile mode, see tiled_scores.

  Raises:
    UserInputError: not a workdir, no checkpoint, a workdir where eval_<split>.json cannot be
      written (before the evaluation), config.eval_batch_size not divisible by the devices
      present, (tile mode) a model that does not segment or a bad tile size, iw_samples < 1 or
      given for a model without q(z|x); an OSError of the writing (one line).
  """
  from segae_jax import data

  run = common.load_run(workdir, checkpoint)
  files = [os.path.join(workdir, f'{name}_{split}.{ext}')
           for name, ext in (('eval', 'json'), ('confusion_matrix', 'png'))]
  for path in files:  # The run's own files for this tool: overwritten, but writable first.
    outputs.check_file(path, 'evaluate', owned=True)
  if iw_samples is not None:
    likelihood.check(run.model, iw_samples)
  dataset = data.build(run.config.data)
  largest = (dataset.sizes or {}).get(split, {})
  tiled = run.uses_tiles(inference, largest.get('max_height', 0), largest.get('max_width', 0))
  start = time.perf_counter()
  if tiled or inference.refined:
    metrics = tiled_scores(run, dataset, split, inference, batch_size, workdir)
  else:
    metrics = _training_evaluation(run, dataset, split)
  results = {**common.result_header(workdir, run, model=False), 'split': split,
             'mode': 'tile' if tiled else 'resize', 'seconds': time.perf_counter() - start}
  if inference.refined:  # The same scores without TTA and post-processing, to compare.
    results.update(tta=inference.tta, min_component_size=inference.min_component_size,
                   fill_holes=inference.fill_holes)
    start = time.perf_counter()
    plain = tiled_scores(run, dataset, split, inference.plain(), batch_size, workdir)
    plain.pop('confusion')
    results.update(metrics_plain=plain, seconds_plain=time.perf_counter() - start)
  counts = metrics.pop('confusion', None)
  if iw_samples is not None:  # Beside the run's -ELBO ('loss' with the VAE's weights of 1).
    from segae_jax import training
    metrics.update(likelihood.evaluate_iwae(run, dataset, split, iw_samples, batch_size,
                                            training.evaluation_key(run.config.seed), iw_images))
  results['metrics'] = metrics
  if counts is not None:
    results['confusion_matrix'] = confusion.as_json(counts, dataset.class_names)
    outputs.write_file(files[1], 'evaluate',
                       outputs.png_bytes(confusion.picture(counts, dataset.class_names)),
                       owned=True)
  outputs.write_file(files[0], 'evaluate', outputs.json_bytes(results), owned=True)
  return results


def _training_evaluation(run, dataset, split: str):
  from segae_jax import training
  from segae_jax.training import parallel
  config = run.config
  parallel.check_batch_divisible(config.eval_batch_size, 'config.eval_batch_size')
  strategy = parallel.make_strategy(config.parallel, *training.step_functions(config))
  state = training.TrainState(step=run.step, apply_fn=run.model.apply,
                              params=run.variables['params'], tx=None, opt_state=None,
                              batch_stats=run.variables.get('batch_stats', {}))
  return training.evaluate(strategy, strategy.replicate(state), dataset, config,
                           training.evaluation_key(config.seed), split, keep_confusion=True)


def tiled_scores(run, dataset, split: str, inference: common.Inference, batch_size: int,
                 workdir: str = '', chunk: int = 64):
  """Segmentation scores of `split` at each image's own resolution: every image segmented by
  segae_jax.Segmenter (tiled where it says) and its label map counted against the
  stored mask in one confusion matrix (inference.scoring.segmentation_scores of it, and the
  matrix as 'confusion': int64 [classes, classes] pixels).

  Raises:
    UserInputError: a model that does not segment, or a bad tile size.
  """
  run.require_segmentation(workdir)
  counts = scoring.confusion_of(run.segmenter(inference, batch_size), dataset, split, chunk)
  return {**scoring.segmentation_scores(counts, dataset.class_names), 'confusion': counts}


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
  results = evaluate_run(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint,
                         common.Inference.from_flags(), FLAGS.batch_size, FLAGS.iw_samples,
                         FLAGS.iw_images)
  print(f'{results["checkpoint"]} checkpoint, step {results["step"]}, split {FLAGS.split} '
        f'({results["mode"]}):')
  print(format_table(results['metrics']))
  if 'metrics_plain' in results:
    print('without --tta, --min_component_size and --fill_holes:')
    print(format_table(results['metrics_plain']))
  print(f'wrote {os.path.join(FLAGS.workdir, "eval_" + FLAGS.split + ".json")}')


def run() -> None:
  """The installed command segae-evaluate (also python -m segae_jax.tools.evaluate)."""
  cli.run_command(main, define_flags, ['workdir'])


if __name__ == '__main__':
  run()
