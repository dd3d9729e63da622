"""Hyperparameter sweeps (grid or random search) over any config:

  python -m segae_jax.tools.sweep --config=configs/default.py --workdir=runs/sweep_beta \
      --grid='{"config.beta": [0.5, 1, 4], "config.model.latent_dim": [16, 32]}' \
      [--metric=test.neg_elbo] [--mode=min] [--set='{"config.num_train_steps": 500}']
  python -m segae_jax.tools.sweep --config=configs/default.py --workdir=runs/sweep_rand --random=8 \
      --space='{"config.learning_rate": {"log_uniform": [1e-4, 1e-2]},
                "config.beta": {"uniform": [0.5, 4]},
                "config.model.latent_dim": {"choice": [16, 32, 64]}}' --seed=0

Each point trains with `training.train_and_evaluate` in its own workdir WORKDIR/<index>_<name>
(e.g. `0_beta=0.5,model.latent_dim=16`), one after the other in this process. Overrides follow
ml_collections semantics: dotted keys into nested fields (the `config.` prefix is optional), and a
value must keep the field's type (an int field takes an int, a float field an int or a float, a
tuple field a list; ConfigDict.update_from_flattened_dict sets them). Every point is built and
validated before anything runs. Overrides go in --set, which sweep.json records; --config.<key>
is refused.

Resumable: a point whose results.json reports step == num_train_steps is read, not re-run; an
unfinished one resumes from its checkpoints. WORKDIR/sweep.json records the definition (config
file, grid or space/N/seed, --set); a different definition in the same WORKDIR is refused.

Writes WORKDIR/results.csv and WORKDIR/results.md (also printed): one row per point with the
swept values, the --metric (a dotted path into results.json), a few standard test metrics and
train_time_s, best first (ascending for --mode=min, descending for max). WORKDIR must be new,
empty, or a sweep's (holding its sweep.json, which is written first): any other folder is refused
before anything runs. Each file is written to a temporary file beside it and renamed
(tools.outputs).

Bad input (invalid JSON, unknown key, wrong type, empty value list, unknown distribution, a metric
absent from the results, a missing config file, ...) prints one line and exits with status 2.
"""
import copy
import csv
import io
import itertools
import json
import math
import os
import re
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import config_path
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from segae_jax import cli, shipped_configs
from segae_jax.errors import UserInputError
from segae_jax.tools import common, outputs

FLAGS = flags.FLAGS

DISTRIBUTIONS = ('uniform', 'log_uniform', 'int_uniform', 'choice')
# Test metrics shown next to the chosen one when the results have them (scalars only).
STANDARD_TEST_METRICS = ('miou', 'mean_dice', 'pixel_accuracy', 'neg_elbo', 'rec_bce', 'kl',
                         'loss', 'psnr')
# Metrics for which larger is better: the default --mode for them is max.
HIGHER_IS_BETTER = ('miou', 'mean_dice', 'pixel_accuracy', 'psnr', 'accuracy',
                    'train_images_per_s')
MAX_NAME_CHARS = 80


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                  lock_config=False)
  flags.register_validator('config', _config_file_exists)
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-workdir per point, results.*')
  flags.DEFINE_string('grid', None, 'JSON object {key: [values]}: the cartesian product.')
  flags.DEFINE_integer('random', None, 'Random search: number of points drawn from --space.')
  flags.DEFINE_string('space', None, 'JSON object {key: {"uniform" | "log_uniform" | '
                      '"int_uniform": [lo, hi]} or {"choice": [values]}} for --random.')
  flags.DEFINE_integer('seed', 0, 'Seed of the numpy Generator drawing the --random points.')
  flags.DEFINE_string('set', None, 'JSON object {key: value}: fixed overrides for every point.')
  flags.DEFINE_string('metric', '', 'Dotted path into results.json to sort by, e.g. test.miou; '
                      'default test.miou, else test.neg_elbo, else test.loss.')
  flags.DEFINE_enum('mode', None, ['min', 'max'], 'Best = smallest (min) or largest (max); '
                    'default max for miou/dice/accuracy/psnr, else min.')


# ------------------------------------------------------------------------------------- points --


def grid_points(grid: Mapping[str, Sequence[Any]]) -> List[Dict[str, Any]]:
  """The cartesian product of a grid, in key order (the last key varies fastest).

  Args:
    grid: {key: non-empty list of values}, e.g. {'config.beta': [0.5, 1], 'config.seed': [0, 1]}.

  Returns:
    One {key: value} dict per point; len = the product of the list lengths.

  Raises:
    UserInputError: an empty grid, or a key whose values are not a non-empty list.
  """
  if not grid:
    raise UserInputError('--grid is empty: give {"config.<key>": [values], ...}')
  for key, values in grid.items():
    if not isinstance(values, (list, tuple)):
      raise UserInputError(f'--grid {key!r}: expected a list of values, got {values!r}')
    if not values:
      raise UserInputError(f'--grid {key!r}: the list of values is empty')
  keys = list(grid)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _check_space(space: Mapping[str, Any]) -> None:
  if not space:
    raise UserInputError('--space is empty: give {"config.<key>": {"uniform": [lo, hi]}, ...}')
  for key, spec in space.items():
    if not isinstance(spec, dict) or len(spec) != 1:
      raise UserInputError(f'--space {key!r}: expected one {{distribution: arguments}}, e.g. '
                           f'{{"uniform": [0, 1]}}, got {spec!r}')
    (dist, args), = spec.items()
    if dist not in DISTRIBUTIONS:
      raise UserInputError(f'--space {key!r}: unknown distribution {dist!r}; known: '
                           f'{", ".join(DISTRIBUTIONS)}')
    if dist == 'choice':
      if not isinstance(args, list) or not args:
        raise UserInputError(f'--space {key!r}: "choice" needs a non-empty list of values, '
                             f'got {args!r}')
      continue
    if (not isinstance(args, list) or len(args) != 2
        or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
      raise UserInputError(f'--space {key!r}: {dist!r} needs [low, high] numbers, got {args!r}')
    lo, hi = args
    if not lo <= hi:
      raise UserInputError(f'--space {key!r}: {dist!r} needs low <= high, got {args!r}')
    if dist == 'log_uniform' and lo <= 0:
      raise UserInputError(f'--space {key!r}: "log_uniform" needs 0 < low, got {args!r}')
    if dist == 'int_uniform' and not all(isinstance(a, int) for a in args):
      raise UserInputError(f'--space {key!r}: "int_uniform" needs integer bounds, got {args!r}')


def random_points(space: Mapping[str, Mapping[str, Any]], n: int,
                  seed: int) -> List[Dict[str, Any]]:
  """`n` points drawn from `space` by `numpy.random.default_rng(seed)`: same seed, same points.

  Args:
    space: {key: {distribution: arguments}} with distribution one of
      'uniform' [lo, hi] (float), 'log_uniform' [lo, hi] (float, 0 < lo; uniform in log space),
      'int_uniform' [lo, hi] (int, both ends included), 'choice' [values] (each equally likely).
    n: number of points, >= 1.
    seed: seed of the generator.

  Returns:
    n {key: value} dicts of plain Python values, keys in `space` order. Points are drawn one
    after the other, each key in order.

  Raises:
    UserInputError: n < 1, an unknown distribution or malformed arguments.
  """
  if n < 1:
    raise UserInputError(f'--random must be at least 1, got {n}')
  _check_space(space)
  rng = np.random.default_rng(seed)
  points = []
  for _ in range(n):
    point = {}
    for key, spec in space.items():
      (dist, args), = spec.items()
      if dist == 'uniform':
        point[key] = float(rng.uniform(args[0], args[1]))
      elif dist == 'log_uniform':
        point[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
      elif dist == 'int_uniform':
        point[key] = int(rng.integers(args[0], args[1], endpoint=True))
      else:
        point[key] = copy.deepcopy(args[int(rng.integers(len(args)))])
    points.append(point)
  return points


def _short_key(key: str) -> str:
  return key[len('config.'):] if key.startswith('config.') else key


def _format_value(value: Any) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    return f'{value:.4g}'
  if isinstance(value, (list, tuple)):
    return '-'.join(_format_value(v) for v in value)
  if isinstance(value, dict):
    return json.dumps(value, separators=(',', ':'))
  return str(value)


def point_name(point: Mapping[str, Any]) -> str:
  """A short, filesystem-safe name of a point, e.g. 'beta=0.5,model.latent_dim=16'.

  Keys lose their `config.` prefix, floats keep 4 significant digits, lists are joined with '-';
  characters other than letters, digits and `._=,+-` become '_'; at most 80 characters.
  """
  name = ','.join(f'{_short_key(k)}={_format_value(v)}' for k, v in point.items())
  name = re.sub(r'[^A-Za-z0-9._=,+-]+', '_', name).strip('._') or 'point'
  return name[:MAX_NAME_CHARS]


# ------------------------------------------------------------------------------------- config --


def _last_line(error) -> str:
  """The last non-empty line of an exception's (or a message's) text."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def load_config(path: str) -> ml_collections.ConfigDict:
  """Loads get_config() from a config file at any path, or a shipped config by name, with
  ml_collections' config-file loader (the one behind --config of train.py; `from configs import
  default` inside it works from any directory: shipped_configs).

  Raises:
    UserInputError: the file does not exist, fails to import or has no get_config().
  """
  path = shipped_configs.resolve(path)
  if not os.path.isfile(path):
    raise UserInputError(f'config file {path} does not exist')
  shipped_configs.make_importable()
  # The loader executes the file into the module sys.modules['sweep_config'] when there is one,
  # so an earlier file's get_config would survive in a file without one: start afresh.
  sys.modules.pop('sweep_config', None)
  try:
    config = ConfigFileFlagParser('sweep', lock_config=False).parse(path)
    config.get('seed')  # The loader defers an unreadable file's error to the first access.
  except Exception as e:  # pylint: disable=broad-except (a config file may raise anything)
    if isinstance(e, AttributeError) and 'get_config' in str(e):
      raise UserInputError(f'config file {path} has no get_config() function') from e
    reason = _last_line(e)
    if not reason.startswith(type(e).__name__):
      reason = f'{type(e).__name__}: {reason}'
    raise UserInputError(f'config file {path} could not be loaded: {reason}') from e
  return config


def _article(type_name: str) -> str:
  return f'an {type_name}' if type_name[0] in 'aeiou' else f'a {type_name}'


def _refuse_override(key: str, current: Any, value: Any) -> None:
  """Raises UserInputError for what ml_collections would accept but a sweep refuses: a whole group
  of fields, None for a field that has a value, a bool for a number (JSON's true is not 1)."""
  if isinstance(current, ml_collections.ConfigDict):
    raise UserInputError(f'config key {key!r} is a group of fields; override its fields '
                         f'({key}.<field>) instead')
  if current is None:
    return
  if value is None:
    _wrong_type(key, current, value)
  if isinstance(current, (int, float)) and isinstance(value, bool) != isinstance(current, bool):
    _wrong_type(key, current, value)


def _wrong_type(key: str, current: Any, value: Any) -> None:
  raise UserInputError(f'config key {key!r} holds {_article(type(current).__name__)} '
                       f'({current!r}); got {value!r} ({type(value).__name__})')


def apply_overrides(config: ml_collections.ConfigDict,
                    point: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with `point`'s overrides set (`config` itself is left unchanged) through
  ml_collections' typed update (ConfigDict.update_from_flattened_dict).

  Args:
    config: the config file's config. Field references survive the copy: overriding
      `config.beta` also changes `config.loss.kl` in configs/default.py.
    point: {dotted key: value}; the `config.` prefix is optional, e.g. 'config.model.latent_dim'.

  Returns:
    The overridden copy.

  Raises:
    UserInputError: naming the key: no such field, a group of fields (ConfigDict) as the target,
      or a value whose type does not fit the field (an int field refuses floats and bools, a
      float field accepts ints, a str field refuses numbers, a tuple field takes a list, ...).
  """
  config = copy.deepcopy(config)
  for key, value in point.items():
    path = _short_key(key)
    try:
      current = config_path.get_value(path, config)
    except (KeyError, AttributeError, IndexError, ValueError) as e:
      hint = _last_line(e.args[0] if e.args else e)  # ml_collections' "Did you mean ...".
      hint = f'; {hint[0].lower()}{hint[1:]}' if hint.startswith('Did you mean') else ''
      raise UserInputError(f'unknown config key {key!r}: the config has no such field{hint}') from e
    _refuse_override(key, current, value)
    try:
      config.update_from_flattened_dict({path: value})
    except TypeError:
      _wrong_type(key, current, value)
    except (KeyError, ValueError) as e:
      raise UserInputError(f'config key {key!r}: {_last_line(e)}') from e
  return config


# ------------------------------------------------------------------------------------ results --


def available_metrics(results: Mapping[str, Any], prefix: str = '') -> List[str]:
  """Dotted paths of the numeric scalars in a results dict (per_class tables left out)."""
  out = []
  for k, v in results.items():
    if k == 'per_class':
      continue
    if isinstance(v, Mapping):
      out += available_metrics(v, f'{prefix}{k}.')
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
      out.append(prefix + k)
  return out


def get_metric(results: Mapping[str, Any], metric: str) -> float:
  """The scalar at dotted path `metric` in `results`, e.g. 'test.neg_elbo'.

  Raises:
    UserInputError: naming the metric and listing the available ones.
  """
  value: Any = results
  for part in metric.split('.'):
    value = value.get(part) if isinstance(value, Mapping) else None
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    raise UserInputError(f'metric {metric!r} is not in the results; available: '
                         f'{", ".join(available_metrics(results))}')
  return float(value)


def default_metric(results: Mapping[str, Any]) -> str:
  """test.miou for segmentation runs, else test.neg_elbo for VAEs, else test.loss."""
  test = results.get('test', {})
  for name in ('miou', 'neg_elbo'):
    if name in test:
      return f'test.{name}'
  return 'test.loss'


def default_mode(metric: str) -> str:
  """'max' for metrics where larger is better (miou, dice, accuracy, psnr, throughput)."""
  return 'max' if metric.split('.')[-1] in HIGHER_IS_BETTER else 'min'


def sort_rows(rows: Sequence[Mapping[str, Any]], metric: str,
              mode: str) -> List[Mapping[str, Any]]:
  """Rows sorted by row[metric], best first: ascending for mode 'min', descending for 'max'.

  The sort is stable (ties keep their order); rows whose metric is missing or NaN come last.

  Raises:
    UserInputError: mode is neither 'min' nor 'max'.
  """
  if mode not in ('min', 'max'):
    raise UserInputError(f'mode must be min or max, got {mode!r}')
  def key(row):
    value = row.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
      return (1, 0.0)
    return (0, value if mode == 'min' else -value)
  return sorted(rows, key=key)


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  if value is None:
    return ''
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value)
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
  """A Markdown table: header, separator, one line per row (floats with 4 significant digits)."""
  cells = [[_cell(row.get(c)) for c in columns] for row in rows]
  return common.format_table(columns, cells, markdown=True) + '\n'


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
  """results.csv: a header of `columns`, then the rows (floats in full, lists as JSON); written
  whole through a temporary file (tools.outputs), as the sweep's own file in its folder."""
  text = io.StringIO(newline='')
  writer = csv.writer(text)
  writer.writerow(columns)
  for row in rows:
    writer.writerow([json.dumps(v) if isinstance(v, (list, tuple, dict)) else
                     ('' if v is None else v) for v in (row.get(c) for c in columns)])
  outputs.write_file(path, 'sweep', text.getvalue().encode(), owned=True)


# -------------------------------------------------------------------------------------- sweep --


def finished_results(workdir: str, num_train_steps: int) -> Optional[Dict[str, Any]]:
  """The results.json of a training run that finished `num_train_steps` steps in `workdir`, or
  None (none yet, unreadable, or of another length)."""
  path = os.path.join(workdir, 'results.json')
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  return results if results.get('step') == num_train_steps else None


def _check_definition(workdir: str, definition: Mapping[str, Any]) -> None:
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)['definition']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserInputError(f'{path} is unreadable ({e}); use another --workdir') from e
  if json.dumps(old) != json.dumps(definition):
    changed = [k for k in definition if json.dumps(old.get(k)) != json.dumps(definition[k])]
    raise UserInputError(f'{workdir} holds a different sweep (changed: {", ".join(changed)}; see '
                         f'{path}); use another --workdir or repeat the recorded definition')


def _check_search(grid, num_random, space) -> None:
  if (grid is None) == (num_random is None):
    raise UserInputError('give exactly one of --grid or --random (with --space)')
  if num_random is not None and space is None:
    raise UserInputError('--random needs --space')
  if grid is not None and space is not None:
    raise UserInputError('--space goes with --random, not with --grid')


def _validate_points(points: Sequence[Mapping[str, Any]],
                     configs: Sequence[ml_collections.ConfigDict]) -> None:
  """training's config checks on every point, naming the point, before anything runs."""
  from segae_jax.training import validation  # pylint: disable=import-outside-toplevel (loads JAX)
  for point, config in zip(points, configs):
    try:
      validation.validate_config(config)
    except UserInputError as e:
      raise UserInputError(f'point {point_name(point)}: {e}') from e


def _resolve_metric(metric: str, results: Mapping[str, Any]) -> str:
  """`metric`, or the default one of the first results; checked to be in `results`."""
  metric = metric or default_metric(results)
  get_metric(results, metric)
  return metric


def _train_missing(workdir: str, names: Sequence[str], configs, results: List, metric: str,
                   log) -> str:
  """Trains the points without finished results, in order, filling `results`; returns the
  metric (resolved from the first results when it was '')."""
  from segae_jax import training  # pylint: disable=import-outside-toplevel
  for i, (name, config) in enumerate(zip(names, configs)):
    if results[i] is not None:
      continue
    log(f'[{i + 1}/{len(names)}] training {name}')
    start = time.perf_counter()
    config.lock()
    results[i] = training.train_and_evaluate(config, os.path.join(workdir, name))
    metric = _resolve_metric(metric, results[i])
    log(f'[{i + 1}/{len(names)}] {name}: {metric}={get_metric(results[i], metric):.4g} '
        f'({time.perf_counter() - start:.0f} s)')
  return metric


def _table_rows(names, points, results, swept_keys, metric: str):
  """(columns, rows): per point its name, swept values, the metric, the standard test metrics
  some point has, and train_time_s."""
  test_metrics = [f'test.{m}' for m in STANDARD_TEST_METRICS
                  if f'test.{m}' != metric and any(m in r.get('test', {}) for r in results)]
  columns = ['run', *(_short_key(k) for k in swept_keys), metric, *test_metrics, 'train_time_s']
  rows = []
  for name, point, res in zip(names, points, results):
    row = {'run': name, **{_short_key(k): v for k, v in point.items()},
           metric: get_metric(res, metric)}
    for m in test_metrics:
      value = res.get('test', {}).get(m.split('.', 1)[1])
      row[m] = float(value) if isinstance(value, (int, float)) else None
    row['train_time_s'] = res.get('train_time_s')
    rows.append(row)
  return columns, rows


def _read_finished(workdir: str, names: List[str], configs, metric: str, log
                   ) -> Tuple[List[Optional[Dict[str, Any]]], str]:
  """(each point's results.json if it finished, else None; the metric resolved against them)."""
  results: List[Optional[Dict[str, Any]]] = [
      finished_results(os.path.join(workdir, n), c.num_train_steps)
      for n, c in zip(names, configs)]
  for res in results:
    if res is not None:
      metric = _resolve_metric(metric, res)
  done = sum(r is not None for r in results)
  log(f'sweep of {len(names)} points in {workdir}: {done} finished, {len(names) - done} to run')
  return results, metric


def run_sweep(config_file: str, workdir: str, grid: Optional[Mapping[str, Any]] = None,
              num_random: Optional[int] = None, space: Optional[Mapping[str, Any]] = None,
              seed: int = 0, fixed: Optional[Mapping[str, Any]] = None, metric: str = '',
              mode: Optional[str] = None, log=print,
              config: Optional[ml_collections.ConfigDict] = None) -> Dict[str, Any]:
  """Runs (or resumes) a sweep and writes sweep.json, results.csv and results.md into `workdir`.

  Args:
    config_file: path of a config file with get_config().
    workdir: the sweep's directory; point i trains in workdir/<i>_<point_name>.
    grid: {key: [values]} for a grid search; or None with `num_random` and `space`.
    num_random, space, seed: random search: `num_random` points from random_points(space, seed).
    fixed: {key: value} overrides applied to every point before the point's own.
    metric: dotted path into results.json to sort by; '' = default_metric of the first results.
    mode: 'min' or 'max'; None = default_mode(metric).
    log: called with one progress line at a time.
    config: config_file's config when already loaded (left unchanged); None loads it.

  Returns:
    {'metric', 'mode', 'columns', 'rows' (sorted, best first), 'table' (Markdown)}.

  Raises:
    UserInputError: both or neither of grid / random search, a bad grid or space, an unknown
      key or a wrong type in any point (all checked before anything runs), a config no training
      would accept, a workdir holding a different sweep or files of anything but a sweep, a
      metric absent from the results; an OSError writing the sweep's files (one line).
  """
  _check_search(grid, num_random, space)
  fixed = dict(fixed or {})
  points = grid_points(grid) if grid is not None else random_points(space, num_random, seed)
  base = apply_overrides(load_config(config_file) if config is None else config, fixed)
  configs = [apply_overrides(base, p) for p in points]
  definition = {'config': os.path.abspath(config_file), 'grid': grid,
                'random': num_random, 'space': space,
                'seed': seed if num_random is not None else None, 'set': fixed}
  workdir = os.path.abspath(os.path.expanduser(workdir))
  outputs.check_reused_folder(workdir, 'sweep', 'sweep.json')
  _check_definition(workdir, definition)
  _validate_points(points, configs)

  names = [f'{i}_{point_name(p)}' for i, p in enumerate(points)]
  # Key order kept: it defines the points, and _check_definition compares definitions as written.
  outputs.write_file(os.path.join(workdir, 'sweep.json'), 'sweep', outputs.json_bytes({
      'definition': definition,
      'points': [{'name': n, 'overrides': p} for n, p in zip(names, points)]}, sort_keys=False),
      owned=True)

  results, metric = _read_finished(workdir, names, configs, metric, log)
  metric = _train_missing(workdir, names, configs, results, metric, log)

  mode = mode or default_mode(metric)
  columns, rows = _table_rows(names, points, results, list(grid if grid is not None else space),
                              metric)
  return _write_tables(workdir, os.path.basename(config_file), metric, mode, columns,
                       sort_rows(rows, metric, mode))


def _write_tables(workdir: str, config_name: str, metric: str, mode: str, columns, rows
                  ) -> Dict[str, Any]:
  """Writes results.csv and results.md (rows sorted best first) and returns run_sweep's dict."""
  table = markdown_table(rows, columns)
  write_csv(os.path.join(workdir, 'results.csv'), rows, columns)
  outputs.write_file(os.path.join(workdir, 'results.md'), 'sweep', (
      f'Sweep of {config_name}, sorted by {metric} ({mode}, best first)\n\n'
      + table).encode(), owned=True)
  return {'metric': metric, 'mode': mode, 'columns': columns, 'rows': rows, 'table': table}


def parse_json_object(text: Optional[str], flag: str) -> Optional[Dict[str, Any]]:
  """The JSON object given to `--<flag>`, or None when the flag was not given.

  Raises:
    UserInputError: not valid JSON, or JSON that is not an object.
  """
  if text is None:
    return None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise UserInputError(f'--{flag} is not valid JSON ({e}): {text}') from e
  if not isinstance(value, dict):
    raise UserInputError(f'--{flag} must be a JSON object {{"config.<key>": ...}}, got {text}')
  return value


def _config_file_exists(config) -> bool:
  """--config's check, run while parsing: a missing file is named in one line (the config loader
  would only say so at the first access).

  Raises:
    flags.IllegalFlagValueError: rather than returning False, which would print the flag's value,
      here the loader's placeholder object, in front of the message.
  """
  if config is None:
    return True  # Not given: the required-flag check reports it.
  path = config_flags.get_config_filename(FLAGS['config'])
  if not os.path.isfile(path):
    raise flags.IllegalFlagValueError(f'config file {path} does not exist')
  return True


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  overrides = config_flags.get_override_values(FLAGS['config'])
  if overrides:
    raise UserInputError(f'--config.{next(iter(overrides))}: give overrides of the config file in '
                         '--set (JSON), which sweep.json records for resuming')
  config_file = config_flags.get_config_filename(FLAGS['config'])
  out = run_sweep(config_file, FLAGS.workdir, grid=parse_json_object(FLAGS.grid, 'grid'),
                  num_random=FLAGS.random, space=parse_json_object(FLAGS.space, 'space'),
                  seed=FLAGS.seed, fixed=parse_json_object(FLAGS.set, 'set'),
                  metric=FLAGS.metric, mode=FLAGS.mode, config=FLAGS.config)
  print(f'sorted by {out["metric"]} ({out["mode"]}, best first):')
  print(out['table'], end='')
  print(f'wrote {os.path.join(FLAGS.workdir, "results.csv")} and results.md')


def run() -> None:
  """The installed command segae-sweep (also python -m segae_jax.tools.sweep)."""
  cli.run_command(main, define_flags, ['config', 'workdir'])


if __name__ == '__main__':
  run()
