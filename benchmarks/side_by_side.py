"""segae_jax against PyTorch on the same cores, and the thread settings of the oneDNN path.

Figures (from `python -m benchmarks.run --only=side_by_side,threads --torch_python=PY`):
  side_by_side/<model>/<dtype>/<round>  Interleaved rounds: the project's train step
                                (benchmarks.run's train_step_figure, conv_impl as given, in
                                compute_dtype <dtype>), then the PyTorch reference eager, then
                                with --compile (inductor), for vae_fmnist and unet64 in turn, so
                                that the machine's drift hits all three alike; images/s of each.
                                float32: ../shared/bench/torch_ref.py; bfloat16:
                                benchmarks/torch_ref.py --bf16 (the same step under autocast).
  side_by_side/<model>/<dtype>  Their means over the rounds, the ratios segae_jax / eager and
                                segae_jax / compiled, and the ratio to the faster peer.
  threads/<setting>             The two reference steps on oneDNN in a fresh process per setting of
                                OpenMP's and XLA's threads (oneDNN's OpenMP pool and XLA's intra-op
                                pool share the cores): images/s.
"""
import json
import os
import sys
import time
from typing import Callable, Dict, List, Sequence

import numpy as np

from benchmarks.common import ROOT, json_lines

TORCH_REF = os.path.join(os.path.dirname(ROOT), 'shared', 'bench', 'torch_ref.py')
TORCH_REF_BF16 = os.path.join(ROOT, 'benchmarks', 'torch_ref.py')
MODELS = ('vae_fmnist', 'unet64')
StepFigure = Callable[[str, str], Dict]
# Process environments compared by thread_figures: the default (OpenMP's team = the cores, its
# threads spinning briefly between regions), one OpenMP thread, OpenMP threads that sleep at
# once, and XLA's own ops on one thread.
THREAD_SETTINGS = {
    'default': {},
    'omp_num_threads_1': {'OMP_NUM_THREADS': '1'},
    'omp_wait_policy_passive': {'OMP_WAIT_POLICY': 'passive'},
    'xla_single_threaded_eigen': {'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false'},
}


def torch_figure(torch_python: str, model: str, compiled: bool,
                 dtype: str = 'float32') -> Dict:
  """One run of the PyTorch reference (2 threads, its own warm-up and timing): its JSON line.
  float32 runs the shared torch_ref.py itself; bfloat16 runs benchmarks/torch_ref.py (the same
  models and step under autocast)."""
  script = TORCH_REF if dtype == 'float32' else TORCH_REF_BF16
  args = ([torch_python, script, model] + (['--compile'] if compiled else [])
          + (['--bf16'] if dtype == 'bfloat16' else []))
  return json_lines(args, " ".join(args), timeout=1200, least=1)[-1]


def read_ledger(ledger: str) -> Dict[str, Dict]:
  """The rounds already finished: {figure name: its line} from the ledger (JSON lines). A last
  line cut short by a stopped run is dropped (that round runs again); any other bad line raises
  json.JSONDecodeError."""
  if not ledger or not os.path.exists(ledger):
    return {}
  with open(ledger) as f:
    text = [line for line in f if line.strip()]
  if text and not text[-1].endswith('\n'):
    text = text[:-1]
  return {line['figure']: line for line in map(json.loads, text)}


def one_round(torch_python: str, step_figure: StepFigure, model: str, dtype: str,
              round_: int) -> Dict:
  """One interleaved round of one model and dtype: the project's step, then PyTorch eager, then
  torch.compile."""
  ours = step_figure(model, dtype)
  eager = torch_figure(torch_python, model, compiled=False, dtype=dtype)
  compiled = torch_figure(torch_python, model, compiled=True, dtype=dtype)
  return {'figure': f'side_by_side/{model}/{dtype}/{round_}', 'model': model, 'dtype': dtype,
          'conv_path': ours['conv_path'], 'segae_jax_images_per_s': ours['images_per_s'],
          'torch_eager_images_per_s': eager['images_per_s'],
          'torch_compile_images_per_s': compiled['images_per_s'], 'torch': eager['framework'],
          'fraction_of_matmul_peak': ours['fraction_of_matmul_peak'],
          'compile_s': ours['compile_s'], 'date': time.strftime('%Y-%m-%d %H:%M:%S')}


def summary(rows: List[Dict], model: str, dtype: str) -> Dict:
  """Means over a model's rounds in one dtype, the ratios of the means and the best peer's."""
  keys = ('segae_jax', 'torch_eager', 'torch_compile')
  mean = {key: float(np.mean([row[f'{key}_images_per_s'] for row in rows])) for key in keys}
  best = max(mean['torch_eager'], mean['torch_compile'])
  return {'figure': f'side_by_side/{model}/{dtype}', 'rounds': len(rows),
          **{f'{key}_images_per_s': value for key, value in mean.items()},
          'ratio_to_torch_eager': mean['segae_jax'] / mean['torch_eager'],
          'ratio_to_torch_compile': mean['segae_jax'] / mean['torch_compile'],
          'ratio_to_best_peer': mean['segae_jax'] / best}


def figures(torch_python: str, step_figure: StepFigure, rounds: int = 4,
            dtypes: Sequence[str] = ('float32',), ledger: str = '') -> List[Dict]:
  """The interleaved rounds and their summaries (see the module docstring).

  Each finished round is appended to `ledger` (JSON lines) at once, and a round already there is
  read back instead of run, so a stopped measurement resumes where it stopped.

  Args:
    torch_python: a Python with PyTorch, to run the references.
    step_figure: (model name, compute dtype) -> benchmarks.run's train_step figure of that
      reference model.
    rounds: how many times the three runs of each model and dtype are repeated.
    dtypes: 'float32' and/or 'bfloat16'.
    ledger: the JSON-lines file of finished rounds ('' keeps nothing).
  """
  done = read_ledger(ledger)
  out = []
  for round_ in range(rounds):
    for dtype in dtypes:
      for model in MODELS:
        name = f'side_by_side/{model}/{dtype}/{round_}'
        if name not in done:
          done[name] = one_round(torch_python, step_figure, model, dtype, round_)
          if ledger:
            with open(ledger, 'a') as f:
              f.write(json.dumps(done[name]) + '\n')
        out.append(done[name])
  for dtype in dtypes:
    for model in MODELS:
      out.append(summary([row for row in out if row['figure'].startswith(
          f'side_by_side/{model}/{dtype}/')], model, dtype))
  return out


def reference_steps(env: Dict[str, str]) -> Dict[str, float]:
  """{'<model>_images_per_s': ...} of the two reference steps on oneDNN, timed by
  benchmarks.run in a fresh process with `env` added (OpenMP and XLA read their settings, and
  the loader its library path, once, at start-up)."""
  steps = json_lines([sys.executable, '-m', 'benchmarks.run', '--only=reference',
                      '--conv_impl=onednn', '--output', os.devnull],
                     f'reference steps with {env}', env)
  return {f'{f["figure"].split("/")[1]}_images_per_s': f['images_per_s']
          for f in steps if f['figure'].startswith('train_step/')}


def thread_figures() -> List[Dict]:
  """The reference steps on oneDNN under each THREAD_SETTINGS environment."""
  return [{'figure': f'threads/{name}', 'env': env, **reference_steps(env)}
          for name, env in THREAD_SETTINGS.items()]
