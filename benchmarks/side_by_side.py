"""segae_jax against PyTorch on the same cores, and the thread settings of the oneDNN path.

Figures (from `python -m benchmarks.run --only=side_by_side,threads --torch_python=PY`):
  side_by_side/<model>/<round>  Interleaved rounds: the project's train step (benchmarks.run's
                                train_step_figure, conv_impl as given), then
                                ../shared/bench/torch_ref.py eager, then with --compile (inductor),
                                for vae_fmnist and unet64 in turn, so that the machine's drift hits
                                all three alike; images/s of each.
  side_by_side/<model>          Their means over the rounds and the ratios segae_jax / eager and
                                segae_jax / compiled.
  threads/<setting>             The two reference steps on oneDNN in a fresh process per setting of
                                OpenMP's and XLA's threads (oneDNN's OpenMP pool and XLA's intra-op
                                pool share the cores): images/s.
"""
import json
import os
import subprocess
import sys
from typing import Callable, Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_REF = os.path.join(os.path.dirname(ROOT), 'shared', 'bench', 'torch_ref.py')
MODELS = ('vae_fmnist', 'unet64')
# Process environments compared by thread_figures: the default (OpenMP's team = the cores, its
# threads spinning briefly between regions), one OpenMP thread, OpenMP threads that sleep at
# once, and XLA's own ops on one thread.
THREAD_SETTINGS = {
    'default': {},
    'omp_num_threads_1': {'OMP_NUM_THREADS': '1'},
    'omp_wait_policy_passive': {'OMP_WAIT_POLICY': 'passive'},
    'xla_single_threaded_eigen': {'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false'},
}


def torch_figure(torch_python: str, model: str, compiled: bool) -> Dict:
  """One run of torch_ref.py (2 threads, its own warm-up and timing): its JSON line."""
  args = [torch_python, TORCH_REF, model] + (['--compile'] if compiled else [])
  proc = subprocess.run(args, capture_output=True, text=True, timeout=1200, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode or not lines:
    raise RuntimeError(f'{" ".join(args)} failed: {proc.stderr[-2000:]}')
  return json.loads(lines[-1])


def figures(torch_python: str, step_figure: Callable[[str], Dict],
            rounds: int = 2) -> List[Dict]:
  """The interleaved rounds and their summary (see the module docstring).

  Args:
    torch_python: a Python with PyTorch, to run torch_ref.py.
    step_figure: model name -> benchmarks.run's train_step figure of that reference model.
    rounds: how many times the three runs of each model are repeated.
  """
  out, seen = [], {model: {'segae_jax': [], 'eager': [], 'compiled': []} for model in MODELS}
  for round_ in range(rounds):
    for model in MODELS:
      ours = step_figure(model)
      eager = torch_figure(torch_python, model, compiled=False)
      compiled = torch_figure(torch_python, model, compiled=True)
      for key, value in (('segae_jax', ours['images_per_s']), ('eager', eager['images_per_s']),
                         ('compiled', compiled['images_per_s'])):
        seen[model][key].append(value)
      out.append({'figure': f'side_by_side/{model}/{round_}', 'conv_path': ours['conv_path'],
                  'segae_jax_images_per_s': ours['images_per_s'],
                  'torch_eager_images_per_s': eager['images_per_s'],
                  'torch_compile_images_per_s': compiled['images_per_s'],
                  'torch': eager['framework'], 'fraction_of_matmul_peak':
                      ours['fraction_of_matmul_peak'], 'compile_s': ours['compile_s']})
  for model, values in seen.items():
    mean = {key: float(np.mean(v)) for key, v in values.items()}
    out.append({'figure': f'side_by_side/{model}', 'rounds': rounds,
                **{f'{key}_images_per_s': value for key, value in mean.items()},
                'ratio_to_torch_eager': mean['segae_jax'] / mean['eager'],
                'ratio_to_torch_compile': mean['segae_jax'] / mean['compiled']})
  return out


def reference_steps(env: Dict[str, str]) -> Dict[str, float]:
  """{'<model>_images_per_s': ...} of the two reference steps on oneDNN, timed by
  benchmarks.run in a fresh process with `env` added (OpenMP and XLA read their settings, and
  the loader its library path, once, at start-up)."""
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--only=reference', '--conv_impl=onednn',
       '--output', os.devnull], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
      text=True, timeout=900, check=False)
  if proc.returncode:
    raise RuntimeError(f'reference steps with {env} failed: {proc.stderr[-2000:]}')
  steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  return {f'{f["figure"].split("/")[1]}_images_per_s': f['images_per_s']
          for f in steps if f['figure'].startswith('train_step/')}


def thread_figures() -> List[Dict]:
  """The reference steps on oneDNN under each THREAD_SETTINGS environment."""
  return [{'figure': f'threads/{name}', 'env': env, **reference_steps(env)}
          for name, env in THREAD_SETTINGS.items()]
