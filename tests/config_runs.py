"""Every shipped config trained a few steps on small real data, and what it gave: the per-step
training losses, the final state's digest and the test metrics. The record in
tests/data/config_runs.json was made before issue 35's restructuring (objectives package,
inference layer, batch contract, model interface); test_config_regression.py holds today's code
against it, so a refactor that changes any config's training shows. A config added later is recorded
when it is added (`--record <name>` trains only it and keeps the others' records).

Record anew (only when a change is meant to alter training, and say so in the commit), after
removing the record (an existing one is resumed: only configs it lacks are trained):
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/config_runs.py --record
"""
import hashlib
import importlib
import json
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import SCENES, set_fields, small_config  # pylint: disable=wrong-import-position

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'config_runs.json')
STEPS = 3
# Every config runs STEPS steps, logged each step, evaluated and checkpointed at the end.
COMMON = {'num_train_steps': STEPS, 'warmup_steps': 1, 'log_every_steps': 1,
          'eval_every_steps': STEPS, 'checkpoint_every_steps': STEPS, 'num_pictures': 2}
FASHION = {'batch_size': 16, 'eval_batch_size': 500}
# A pool for the scenes configs that train with one: a quarter of the scenes keep their masks.
POOL = {'labeled_fraction': 0.25, 'data.unlabeled_per_batch': 8, 'batch_size': 16}
POOL_PARAMS = {'rampup_fraction': 0.5, 'patch_size': 8}
SCENES_POOLED = ('fixmatch_scenes', 'masked_rec_scenes', 'denoising_scenes', 'unimatch_scenes')
FOLDER = {'data.image_size': (16, 16), 'data.test_fraction': 0.25, 'model.features': (8, 16),
          'batch_size': 8, 'eval_batch_size': 4, 'data.normalize': 'unit'}
FOLDER_SEGMENTING = {'data.num_classes': 3, 'data.channels': 3}


def shipped() -> list:
  """The names of the shipped training configs (configs/*.py whose get_config has a data
  section; configs/probe_fashion_mnist.py configures the probe tool, not a training)."""
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  names = sorted(f[:-3] for f in os.listdir(root) if f.endswith('.py') and f != '__init__.py')
  modules = {n: importlib.import_module(f'configs.{n}') for n in names}
  return [n for n, m in modules.items() if hasattr(m, 'get_config') and 'data' in m.get_config()]


def write_folders(root: str) -> None:
  """16 labelled 20x24 RGB PNGs with 3-class masks and 16 unlabelled 24x20 ones, under root."""
  from PIL import Image
  rng = np.random.default_rng(0)
  dirs = {sub: os.path.join(root, sub) for sub in ('images', 'masks', 'unlabeled')}
  for path in dirs.values():
    os.makedirs(path, exist_ok=True)
  for i in range(16):
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(image).save(os.path.join(dirs['images'], f'{i:02d}.png'))
    Image.fromarray((image[..., 0] // 86).astype(np.uint8)).save(
        os.path.join(dirs['masks'], f'{i:02d}.png'))
    Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(
        os.path.join(dirs['unlabeled'], f'u{i:02d}.png'))


def _folder_config(name: str, tmp: str):
  dirs = {sub: os.path.join(tmp, 'folders', sub) for sub in ('images', 'masks', 'unlabeled')}
  if not os.path.isdir(dirs['images']):
    write_folders(os.path.join(tmp, 'folders'))
  config = importlib.import_module(f'configs.{name}').get_config()
  fields = {**COMMON, **FOLDER, 'data.tfds_dir': os.path.join(tmp, 'tfds')}
  segmenting = name not in ('ae_folder', 'vae_folder', 'pretrain_folder')
  if segmenting:
    fields.update(FOLDER_SEGMENTING, **{'data.images_dir': dirs['images'],
                                        'data.masks_dir': dirs['masks']})
  else:
    fields.update({'data.images_dir': dirs['unlabeled'], 'data.channels': 3})
  if 'semisup' in name or name in ('fixmatch_folder', 'masked_rec_folder', 'denoising_folder',
                                    'unimatch_folder', 'unimatch_segae_folder'):
    fields.update({'data.unlabeled_dir': dirs['unlabeled'], 'data.unlabeled_per_batch': 8,
                   'batch_size': 16})
  if 'patch_size' in config.get('objective_params', {}):
    fields['objective_params.patch_size'] = 4
  if name == 'finetune_folder':
    fields['init_from'] = _pretrained(tmp, 'pretrain_folder')
  if 'features' not in config.model:
    del fields['model.features']
  return set_fields(config, fields)


def _pretrained(tmp: str, pretrain: str) -> str:
  """The workdir of the pretraining run `pretrain`, trained here first."""
  from segae_jax import training
  workdir = os.path.join(tmp, 'pretrained', pretrain)
  if not os.path.isdir(workdir):
    training.train_and_evaluate(config_for(pretrain, tmp), workdir)
  return workdir


def config_for(name: str, tmp: str):
  """The config `name` shrunk to a STEPS-step run on small data made under `tmp`."""
  if name.endswith('_folder') or name == 'folder' or 'folder_' in name:
    return _folder_config(name, tmp)
  tfds_dir = tfds_data(tmp)
  if name.endswith('_scenes'):
    config = small_config(tfds_dir, name, **{**SCENES, **COMMON})
    if name in SCENES_POOLED:
      params = {f'objective_params.{k}': v for k, v in POOL_PARAMS.items()
                if k in config.objective_params}
      set_fields(config, {**POOL, **params})
    if name == 'finetune_scenes':
      set_fields(config, {'labeled_fraction': 0.25, 'init_from': _pretrained(tmp, 'pretrain_scenes')})
    return config
  if name == 'unet_pets':
    root = pets_data(tmp)
    return small_config(root, name, **COMMON, **{
        'data.image_size': (32, 32), 'model.features': (8, 16), 'batch_size': 8,
        'eval_batch_size': 8})
  config = small_config(tfds_dir, name, **{**COMMON, **FASHION})
  narrow = {'model.features': (8, 16), 'model.hidden_dim': 64}
  return set_fields(config, {k: v for k, v in narrow.items() if k.split('.')[1] in config.model})


def tfds_data(tmp: str) -> str:
  """A tfds data dir with Fashion-MNIST prepared from the real IDX files (once per tmp)."""
  from segae_jax.data import fashion_mnist
  path = os.path.join(tmp, 'fashion_tfds')
  if not os.path.isdir(path):
    fashion_mnist.prepare('', path)
  return path


def pets_data(tmp: str) -> str:
  """A tfds data dir with a small oxford_iiit_pet written as tfds would (tests/test_pets.py)."""
  from test_pets import write_prepared
  root = os.path.join(tmp, 'pets_tfds')
  if not os.path.isdir(root):
    os.makedirs(root)
    write_prepared(root)
  return root


def digest(tree) -> str:
  """sha256 of a pytree's leaves: paths, dtypes, shapes and bytes, in path order."""
  import flax.traverse_util
  import jax
  flat = flax.traverse_util.flatten_dict(jax.device_get(tree), sep='/')
  h = hashlib.sha256()
  for path in sorted(flat):
    value = np.asarray(flat[path])
    h.update(f'{path}:{value.dtype}:{value.shape};'.encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def magnitudes(tree) -> dict:
  """{top-level name: sum of |leaf| in float64}: a coarse view of the state for a tolerant
  comparison on a machine whose XLA code differs."""
  import jax
  return {k: float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(v)))
          for k, v in jax.device_get(tree).items() if jax.tree.leaves(v)}


def train(name: str, tmp: str, workdir: str) -> dict:
  """Trains config `name` (config_for, its data under `tmp`) in `workdir` and returns what it
  gave: {'train': the logged training metrics of each step but the first (compilation),
  'state_sha256', 'magnitudes' (of the final params, batch_stats, objective_state), 'test'}."""
  from conftest import saved_state
  from segae_jax import training
  config = config_for(name, tmp)
  if name == 'unet_pets':
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=16, data_dir=config.data.tfds_dir,
                                policy=tfds.testing.MockPolicy.USE_FILES):
      results = training.train_and_evaluate(config, workdir)
  else:
    results = training.train_and_evaluate(config, workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  timing = ('train/images_per_s', 'train/data_wait_fraction')
  train_metrics = [{k: v for k, v in l.items() if k.startswith('train/') and k not in timing}
                   for l in lines if 'train/loss' in l]
  state = saved_state(workdir, STEPS)['train_state']
  kept = {k: state[k] for k in ('params', 'batch_stats', 'objective_state') if state.get(k)}
  test = {k: v for k, v in results['test'].items() if isinstance(v, float)}
  return {'train': train_metrics, 'state_sha256': digest(kept), 'magnitudes': magnitudes(kept),
          'test': test}


def machine() -> dict:
  """What decides XLA's CPU code: the JAX version and the CPU's feature flags."""
  import jax
  flags = ''
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((l for l in f if l.startswith('flags')), '')
  except OSError:
    pass
  return {'jax': jax.__version__, 'machine': platform.machine(),
          'cpu_flags_sha256': hashlib.sha256(flags.encode()).hexdigest(),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def main() -> None:
  import shutil
  import tempfile
  record = {'machine': machine(), 'steps': STEPS, 'configs': {}}
  if os.path.exists(RECORD):  # A stopped recording resumes: its finished configs are kept.
    with open(RECORD) as f:
      record = json.load(f)
    assert record['machine'] == machine() and record['steps'] == STEPS, RECORD
  with tempfile.TemporaryDirectory() as tmp:
    for name in (sys.argv[2:] or shipped()):
      if name in record['configs'] and not sys.argv[2:]:
        continue
      record['configs'][name] = train(name, tmp, os.path.join(tmp, 'runs', name))
      print(name, [m['train/loss'] for m in record['configs'][name]['train']], flush=True)
      with open(RECORD + '.tmp', 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
      os.replace(RECORD + '.tmp', RECORD)
  shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)  # conftest's.


if __name__ == '__main__':
  if sys.argv[1:2] != ['--record']:
    sys.exit('usage: python tests/config_runs.py --record [config ...]')
  main()
