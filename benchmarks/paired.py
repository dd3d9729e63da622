"""What the paired multi-seed benchmarks of training recipes share (small_foreground.py,
nuclei.py): per-arm means over seeds and each arm's paired difference to a reference arm with
its 95% t interval (label_efficiency.paired_interval), as JSON rows and a Markdown table; and
their data folders, written once."""
import json
import os
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from benchmarks.common import write_output
from benchmarks.label_efficiency import paired_interval, train, wall_time, write_jsonl


def write_splits_once(root: str, counts: Mapping[str, int], folders: Sequence[str],
                      write_example: Callable[[np.random.Generator, str, int], float]
                      ) -> Dict[str, float]:
  """A benchmark's data folder, written once: for each split and its count, makes
  root/<folder>/<split> for every folder and calls write_example(rng, split, index), which
  writes one example and returns its foreground's pixel fraction (one seeded rng throughout).
  Returns the mean fraction per split, stored in root/fractions.json; a folder holding that file
  is finished and is read back instead."""
  done = os.path.join(root, 'fractions.json')
  if os.path.exists(done):
    return json.load(open(done))
  rng = np.random.default_rng(0)
  fractions = {}
  for split, count in counts.items():
    for folder in folders:
      os.makedirs(os.path.join(root, folder, split), exist_ok=True)
    fractions[split] = float(np.mean([write_example(rng, split, i) for i in range(count)]))
  with open(done, 'w') as f:
    json.dump(fractions, f)
  return fractions


def run_grid(workdir: str, arms: Sequence[str], seeds: Sequence[int], key: str,
             launch: Callable[[str, int], Tuple[str, List[str]]]) -> List[Dict]:
  """Every arm of every seed, seed by seed (a stopped benchmark still pairs every arm), each a
  train.py run in workdir/runs/<arm>/seed<k> (label_efficiency.train: finished runs are read
  back). launch(arm, seed) -> (config name or path, overrides). Rows: the test split's class-1
  IoU as `key`, mIoU, steps and wall seconds; the scores must be at native resolution."""
  rows = []
  for seed in seeds:
    for arm in arms:
      run_dir = os.path.join(workdir, 'runs', arm, f'seed{seed}')
      config, overrides = launch(arm, seed)
      results = train(config, run_dir, overrides)
      assert results['test_resolution'] == 'native', run_dir
      rows.append({'figure': f'run/{arm}/seed{seed}', 'arm': arm, 'seed': seed,
                   key: results['test']['per_class']['class_1']['iou'],
                   'miou': results['test']['miou'], 'steps': results['step'],
                   'wall_s': wall_time(run_dir)})
  return rows


def write(output: str, data: Mapping, rows: Sequence[Mapping], summary: Sequence[Mapping],
          table: str) -> None:
  """The JSON lines (the data's row, the runs', the summary's; dated) and the table beside them
  (output's name with .md)."""
  write_jsonl(output, [{'figure': 'data', **data}, *rows, *summary])
  write_output(os.path.splitext(output)[0] + '.md', table)


def summary_rows(rows: Sequence[Mapping], arms: Sequence[str], reference: str,
                 keys: Sequence[str]) -> List[Dict]:
  """rows {'arm', 'seed', 'wall_s', key: value, ...} -> per arm: each key's mean and sd over
  seeds and '<key>_difference_to_<reference>' (paired by seed), the fastest wall time."""
  by_arm = {arm: {r['seed']: r for r in rows if r['arm'] == arm} for arm in arms}
  out = []
  for arm, seeds in by_arm.items():
    if not seeds:
      continue
    paired = sorted(set(seeds) & set(by_arm[reference]))
    row = {'figure': f'arm/{arm}', 'seeds': sorted(seeds)}
    for key in keys:
      values = [seeds[s][key] for s in sorted(seeds)]
      row[key] = float(np.mean(values))
      row[key + '_sd'] = float(np.std(values, ddof=1)) if len(values) > 1 else None
      row[f'{key}_difference_to_{reference}'] = paired_interval(
          [seeds[s][key] for s in paired], [by_arm[reference][s][key] for s in paired])
    row['wall_s_min'] = float(min(r['wall_s'] for r in seeds.values()))
    out.append(row)
  return out


def markdown(summary: Sequence[Mapping], reference: str, key: str, title: str,
             other: str = 'miou') -> str:
  """A table of `key` (points: ×100) with its paired difference to `reference`, `other`, the
  seeds and the wall time per run."""
  lines = [f'| arm | {title} | Δ to {reference}, 95% interval | {other} | seeds | wall s / run |',
           '|---|---|---|---|---|---|']
  sd = lambda row, k: f' ± {100 * row[k + "_sd"]:.1f}' if row[k + '_sd'] is not None else ''
  for row in summary:
    d = row[f'{key}_difference_to_{reference}']
    interval = ('(reference)' if row['figure'] == f'arm/{reference}' else
                f'{100 * d["mean"]:+.1f} [{100 * d["low"]:+.1f}, {100 * d["high"]:+.1f}]')
    lines.append(f'| {row["figure"][4:]} | {100 * row[key]:.1f}{sd(row, key)} | {interval} | '
                 f'{100 * row[other]:.1f}{sd(row, other)} | {len(row["seeds"])} | '
                 f'{row["wall_s_min"]:.0f} |')
  return '\n'.join(lines) + '\n'
