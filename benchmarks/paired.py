"""What the paired multi-seed benchmarks of training recipes share (small_foreground.py,
nuclei.py): per-arm means over seeds and each arm's paired difference to a reference arm with
its 95% t interval (label_efficiency.paired_interval), as JSON rows and a Markdown table."""
from typing import Dict, List, Mapping, Sequence

import numpy as np

from benchmarks.label_efficiency import paired_interval


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
