"""Loading a trained run back from its workdir, for evaluation and prediction."""
import dataclasses
import json
import os
from typing import Any, Dict, Sequence, Tuple

import jax
import ml_collections

from segae_jax.training import checkpoints
from segae_jax.errors import UserInputError

CHECKPOINT_KINDS = ('best', 'latest')


@dataclasses.dataclass
class TrainedRun:
  """A restored run: its config, model, variables ({'params', maybe 'batch_stats'}) and step."""
  config: ml_collections.ConfigDict
  model: Any
  variables: Dict[str, Any]
  step: int
  checkpoint: str            # 'best' or 'latest': which one was restored.
  image_shape: Tuple[int, int, int]
  class_names: Sequence[str]


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise UserInputError(f'{path} not found: {workdir} is not a training workdir (train first with '
                         'python train.py --workdir=...)')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, checkpoint: str = 'best') -> TrainedRun:
  """Restores the best checkpoint (by config.best_metric; falls back to the latest when the run
  kept none) or the latest one.

  Raises:
    UserInputError: not a workdir, no checkpoint in it, or an unknown `checkpoint` kind.
  """
  from segae_jax import training  # Heavy; keeps `--help` fast.
  if checkpoint not in CHECKPOINT_KINDS:
    raise UserInputError(f'unknown checkpoint {checkpoint!r}; known: {", ".join(CHECKPOINT_KINDS)}')
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir)
  kind, ckpt, step = None, None, None
  candidates = (['best'] if checkpoint == 'best' else []) + ['latest']
  for candidate in candidates:
    directory = os.path.join(workdir, 'checkpoints_best' if candidate == 'best' else 'checkpoints')
    if not os.path.isdir(directory):
      continue
    manager = checkpoints.Checkpointer(directory)
    if manager.latest_step() is not None:
      kind, ckpt, step = candidate, manager, manager.latest_step()
      break
    manager.close()
  if ckpt is None:
    raise UserInputError(f'workdir {workdir} has no checkpoint (checkpoints/ is empty or missing)')
  meta = ckpt.read_meta(step)
  image_shape = tuple(meta['image_shape'])
  # Exactly the model training built (compute dtype, convolution implementation).
  model = training.build_model(config, image_shape, meta.get('num_classes'))
  state = training.create_train_state(config, model, image_shape, jax.random.PRNGKey(0))
  restored, _ = ckpt.restore(step, {'train_state': state, 'rng': jax.random.PRNGKey(0)},
                             jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  ckpt.close()
  state = restored['train_state']
  return TrainedRun(config=config, model=model, variables=training.model_variables(state),
                    step=step, checkpoint=kind, image_shape=image_shape,
                    class_names=meta.get('class_names') or [])
