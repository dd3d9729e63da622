"""The inference layer (segae_jax/inference/) sits below training and the tools: importing it
loads neither, and `import segae_jax` loads no JAX until the Segmenter is asked for."""
import subprocess
import sys

from conftest import ROOT, cpu_env

LAYER = ('segae_jax.inference', 'segae_jax.inference.segmenter', 'segae_jax.inference.tiling',
         'segae_jax.inference.postprocess', 'segae_jax.inference.scoring',
         'segae_jax.inference.model', 'segae_jax.inference.export')


def _loaded_after(statement: str, prefixes) -> str:
  """The modules starting with one of `prefixes` that a fresh interpreter holds after
  `statement`, as the printed sorted list."""
  code = (f'import sys\n{statement}\n'
          f'print(sorted(m for m in sys.modules if m.startswith({tuple(prefixes)!r})))')
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=cpu_env(1), check=True,
                        capture_output=True, text=True).stdout.strip()


def test_the_inference_layer_imports_neither_training_nor_tools():
  statement = '\n'.join(f'import {name}' for name in LAYER)
  assert _loaded_after(statement, ('segae_jax.training', 'segae_jax.tools')) == '[]'


def test_import_segae_jax_stays_light_until_the_segmenter_is_used():
  assert _loaded_after('import segae_jax', ('jax', 'flax', 'segae_jax.')) == '[]'
  loaded = _loaded_after('import segae_jax\nsegae_jax.Segmenter', ('segae_jax.',))
  assert 'segae_jax.api' in loaded and 'segae_jax.training' not in loaded


def test_every_package_of_the_tree_is_installed():
  """pyproject.toml lists the packages a (non-editable) install copies: a new package directory
  missing there (inference/, training/objectives/) would work in the editable checkout and be
  absent from a wheel."""
  import os
  import tomllib
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    listed = set(tomllib.load(f)['tool']['setuptools']['packages'])
  found = {'segae_jax.configs'}
  for folder, _, files in os.walk(os.path.join(ROOT, 'segae_jax')):
    if '__init__.py' in files and '__pycache__' not in folder:
      found.add(os.path.relpath(folder, ROOT).replace(os.sep, '.'))
  assert found == listed
