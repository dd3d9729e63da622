"""Config checks run before anything is built or written, each failing with one clear line."""
import logging
from typing import Tuple

import jax
import ml_collections

from segae_jax import data, losses, models, plugins
from segae_jax.data import fingerprint, local
from segae_jax.training import objectives, optimizers, parallel
from segae_jax.errors import UserInputError
from segae_jax.models import conv_ops

log = logging.getLogger(__name__)

POSITIVE_INTS = ('batch_size', 'eval_batch_size', 'num_train_steps', 'log_every_steps',
                 'eval_every_steps', 'checkpoint_every_steps', 'max_to_keep', 'num_pictures')
NONFINITE = ('stop', 'skip')
COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """validate_run's config: `config` itself, or a resolved copy of it (resolve_auto)."""
  return validate_run(config)[0]


def validate_run(config: ml_collections.ConfigDict
                 ) -> Tuple[ml_collections.ConfigDict, objectives.Objective]:
  """Checks values, names and device divisibility of a training config, after filling in the
  values it leaves to the data (resolve_auto), and makes its objective: the run's one, checked
  first (its parameters before any file is read), at the image size the config names where it
  names one (the run sets the dataset's: Objective.set_image_size). config.plugins are imported
  before anything else (segae_jax.plugins).

  Returns:
    (the config checked: `config` itself or a resolved copy of it, the objective).

  Raises:
    UserInputError: naming the key, the value and what was expected.
  """
  plugins.load(config.get('plugins', ()))  # What the config names may be theirs.
  objective = objectives.make(config, data.configured_image_size(config.data),
                              data.has_pool(config))
  config = resolve_auto(config, objective)
  size = data.configured_image_size(config.data)
  if size is not None and objective.facts.image_size is None:  # Inferred from the folder.
    objective.set_image_size(size)
  _check_fields(config)
  _check_objective_shares(config, objective)
  return config, objective


def _check_fields(config: ml_collections.ConfigDict) -> None:
  """The run's values and names, one line for the first that is wrong."""
  for key in POSITIVE_INTS:
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise UserInputError(f'config.{key} must be a positive integer, got {value!r}')
  if not config.learning_rate > 0:
    raise UserInputError(f'config.learning_rate must be > 0, got {config.learning_rate!r}')
  if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
    raise UserInputError(f'config.warmup_steps must be an integer >= 0, got '
                         f'{config.warmup_steps!r}')
  if config.warmup_steps > config.num_train_steps:
    log.warning('config.warmup_steps=%d is longer than the run (num_train_steps=%d): warming up '
                'over all %d steps', config.warmup_steps, config.num_train_steps,
                optimizers.warmup_steps(config))
  if config.get('grad_clip_norm', 0.0) < 0:
    raise UserInputError(f'config.grad_clip_norm must be >= 0 (0 = off), got '
                         f'{config.grad_clip_norm}')
  if not 0.0 < config.labeled_fraction <= 1.0:
    raise UserInputError(f'config.labeled_fraction must be in (0, 1], got '
                         f'{config.labeled_fraction}')
  if config.get('nonfinite', 'stop') not in NONFINITE:
    raise UserInputError(f'config.nonfinite must be one of {", ".join(NONFINITE)}, got '
                         f'{config.nonfinite!r}')
  if config.get('compute_dtype', 'float32') not in COMPUTE_DTYPES:
    raise UserInputError(f'config.compute_dtype must be one of {", ".join(COMPUTE_DTYPES)}, got '
                         f'{config.compute_dtype!r}')
  if not config.get('loss_scale', 1.0) > 0:
    raise UserInputError(f'config.loss_scale must be > 0, got {config.loss_scale!r}')
  conv_ops.resolve(config.get('conv_impl', 'auto'))   # UserInputError if unknown.
  if config.parallel not in parallel.STRATEGIES:
    raise UserInputError(f'unknown config.parallel {config.parallel!r}; known: '
                         f'{", ".join(parallel.STRATEGIES)}')
  models.MODELS.get(config.model.name)
  data.DATASETS.get(config.data.name)
  data.cache_mode(config.data.get('cache', 'auto'))
  data.check_num_workers(config.data.get('num_workers', 0))
  _check_data_fits_model(config)
  optimizers.OPTIMIZERS.get(config.optimizer)
  optimizers.make_schedule(config)
  parallel.check_batch_divisible(config.batch_size, 'config.batch_size')
  parallel.check_batch_divisible(config.eval_batch_size, 'config.eval_batch_size')


def resolve_auto(config: ml_collections.ConfigDict,
                 objective: objectives.Objective) -> ml_collections.ConfigDict:
  """The config with the settings a segmentation_folder config leaves unset (None) inferred from
  the folder's fingerprint (data.fingerprint): config.data's num_classes, channels, normalize,
  image_size and test_fraction, and config.batch_size and eval_batch_size; a batch or test split
  that cannot work with the folder is refused. Logs one line: the fingerprint and what was
  inferred (an image size a multiple of the model's downsampling and objective.image_multiple,
  a batch of whole CutMix pairs: objective.labeled_multiple). Reads the image headers (and, for
  the class count, the masks); prepares nothing.

  Returns:
    A resolved, locked copy of `config` (what config.json and the checkpoints hold); `config`
    itself for other datasets.

  Raises:
    UserInputError: a bad folder or file, a value that cannot be inferred, a batch larger than
      the training split or a split left empty, in one line.
  """
  if config.data.get('name') != 'segmentation_folder':
    return config
  model = config.model
  factor = fingerprint.downsampling_multiple(
      len(model.features), issubclass(models.MODELS.get(model.name), models.UNetBase),
      objective.image_multiple)
  fp, data_values = fingerprint.plan(config.data, factor)
  run_values = _batch_sizes(config, fp, {**config.data, **data_values},
                            objective.labeled_multiple)
  inferred = {**data_values, **run_values}
  log.info('%s', fingerprint.summary(fp, inferred))
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    for key, value in data_values.items():
      resolved.data[key] = value
    for key, value in run_values.items():
      resolved[key] = value
  resolved.lock()
  return resolved


def _batch_sizes(config: ml_collections.ConfigDict, fp: fingerprint.Fingerprint,
                 data_config: dict, pairs: int) -> dict:
  """{'batch_size': ..., 'eval_batch_size': ...} for those config leaves None (fitted to the
  split, the devices and the objective's CutMix pairs); a given batch_size checked against the
  training split. `pairs`: what each device's share of labelled images is a multiple of."""
  size = local.check_image_size(data_config['image_size'])
  train, test = fingerprint.split_sizes(fp, data_config['test_fraction'])
  if config.labeled_fraction < 1.0 and (data.has_pool(config) or config.get('labeled_only')):
    train = max(1, round(config.labeled_fraction * train))  # data.dataset.labeled_subset.
  share = config.data.get('unlabeled_per_batch', 0)
  values = {}
  if config.batch_size is None:
    values['batch_size'] = fingerprint.infer_batch_size(train, share, jax.device_count() * pairs,
                                                        size)
  else:
    where = (f'{fp.num_pairs} pairs in train/' if fp.num_folder_test is not None else
             f'{fp.num_pairs} pairs, test_fraction {data_config["test_fraction"]}')
    fingerprint.check_batch_size(config.batch_size, share, train, where)
  if config.eval_batch_size is None:
    values['eval_batch_size'] = fingerprint.infer_eval_batch_size(test, jax.device_count(), size)
  return values


def _check_data_fits_model(config: ml_collections.ConfigDict) -> None:
  """A dataset without masks needs a model and loss that do not segment; an unlabelled pool
  needs a batch share and excludes the labeled_fraction simulation."""
  if config.data.name == 'image_folder':
    seg_terms = sorted(t for t, w in config.loss.items() if w and t in losses.SEGMENTATION_TERMS)
    if models.segments(config.model.name) or seg_terms:
      what = (f'model {config.model.name!r}' if models.segments(config.model.name)
              else f'config.loss term(s) {", ".join(seg_terms)}')
      raise UserInputError(f'config.data.name=image_folder has no masks, but {what} segments; '
                           f'use segmentation_folder (masks_dir, optionally unlabeled_dir) or a '
                           f'model that reconstructs (ae, sparse_ae, vae, unet_ae)')
  pool = data.has_pool(config)
  share = config.data.get('unlabeled_per_batch', 0)
  data.check_unlabeled_per_batch(share, config.batch_size, pool, jax.process_count())
  if config.get('labeled_only', False) and share:
    raise UserInputError(f'config.labeled_only drops the images without masks, but '
                         f'config.data.unlabeled_per_batch={share} asks for them; set one')
  if config.data.get('unlabeled_dir', '') and config.labeled_fraction < 1.0:
    raise UserInputError(f'config.labeled_fraction={config.labeled_fraction} simulates '
                         f'unlabelled images by hiding masks; with config.data.unlabeled_dir '
                         f'the unlabelled images are real: leave labeled_fraction at 1')


def _check_objective_shares(config: ml_collections.ConfigDict,
                            objective: objectives.Objective) -> None:
  """The objective's share of every batch: whole CutMix pairs on every device."""
  share = config.data.get('unlabeled_per_batch', 0)
  if share:
    # Every device takes its share of the pool (and whole CutMix pairs of it).
    multiple = objective.pool_multiple
    parallel.check_batch_divisible(share, 'config.data.unlabeled_per_batch', multiple)
  if objective.labeled_multiple > 1:  # Whole CutMix pairs of labelled images on every device.
    parallel.check_batch_divisible(config.batch_size - share,
                                   'config.batch_size - config.data.unlabeled_per_batch',
                                   objective.labeled_multiple)
