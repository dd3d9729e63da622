"""The label-efficiency grid under each weak view, side by side: `python -m benchmarks.weak_views
--workdir=DIR [--output=FILE.jsonl]` reads back the finished runs of DIR's grids
(label_efficiency.runs_dir: DIR/runs with flips, DIR/runs_flips_scale_crop with scale-crop),
trains nothing, and prints a Markdown table: per fraction, weak view and arm, the test mIoU of
each seed, the paired difference to the same view's reference with its 95% interval, the
fraction of the gap to each view's all-masks ceiling that the arm closes, and for an arm built
on another (label_efficiency.TUNED_AS: `unimatch_rec`, `mae_unimatch` on `unimatch`) the paired
difference to that arm, which is what its addition buys.

`--recorded=FILE.jsonl` (repeatable) reads back the per-seed test mIoU of an earlier output of
this command for runs whose folders are gone (a grid measured on another machine, or in a
session whose disk was not kept); a run folder that has finished wins over its recorded figure.

Why both ceilings: a weak view the reference gains from can cost the all-masks arm (measured on
the scenes: scale-crop +1.7 validation points for the reference, 4 test points less for the
100% arm), and a lower ceiling makes any gap look more closed; the higher one is the fair
yardstick.
"""
import argparse
import os
import json
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from benchmarks import label_efficiency as le

SEEDS = (0, 1, 2)
CEILING = 'full'
# Where the harness files the arms of ARM_FRACTION (one run per seed): under the first of its
# --fractions, 5pct in every grid run so far.
CEILING_FRACTION = '5pct'


Recorded = Mapping[Tuple[str, str, str, int], float]


def read_recorded(paths: Sequence[str]) -> Dict[Tuple[str, str, str, int], float]:
  """{(view, fraction, arm, seed): test mIoU} from earlier outputs of this command (their rows'
  'miou' maps seeds, written as strings, to mIoU); a later file wins over an earlier one."""
  out = {}
  for path in paths:
    with open(path) as f:
      for row in map(json.loads, f):
        for seed, miou in row['miou'].items():
          out[(row['view'], row['fraction'], row['arm'], int(seed))] = float(miou)
  return out


def test_miou(workdir: str, view: str, fraction: str, arm: str, seed: int,
              recorded: Optional[Recorded] = None) -> Optional[float]:
  """The final test mIoU of a finished grid run, else its recorded figure, else None."""
  results = le.finished(os.path.join(workdir, le.runs_dir(view), fraction, arm, f'seed{seed}'))
  if results is not None:
    return float(results['test']['miou'])
  return (recorded or {}).get((view, fraction, arm, seed))


def paired(mious: Mapping[int, float], other: Mapping[int, Optional[float]]) -> Dict[str, float]:
  """The paired interval of mious against other over the seeds both have."""
  seeds = [s for s in mious if other.get(s) is not None]
  return le.paired_interval([mious[s] for s in seeds], [other[s] for s in seeds])


def compare(workdir: str, seeds=SEEDS, recorded: Optional[Recorded] = None) -> List[Dict]:
  """One row per (fraction, view, arm) with a finished seed: {'fraction', 'view', 'arm',
  'miou': {seed: mIoU}, 'difference_to_unet': paired_interval, 'gap_closed': {ceiling's view:
  fraction closed over the seeds it shares}}, and for an arm of label_efficiency.TUNED_AS
  'difference_to_base': {'arm': the arm it builds on, **paired_interval} (mIoU as fractions in
  [0, 1])."""
  miou_of = lambda view, fraction, arm, s: test_miou(workdir, view, fraction, arm, s, recorded)
  ceilings = {view: {s: miou_of(view, CEILING_FRACTION, CEILING, s) for s in seeds}
              for view in le.WEAK_VIEWS}
  rows = []
  for fraction in le.FRACTIONS:
    for view in le.WEAK_VIEWS:
      reference = {s: miou_of(view, fraction, le.REFERENCE, s) for s in seeds}
      for arm in le.ARMS:
        if arm in le.ARM_FRACTION and fraction != CEILING_FRACTION:
          continue  # One run per seed, shown once.
        mious = {s: m for s in seeds if (m := miou_of(view, fraction, arm, s)) is not None}
        if not mious:
          continue
        gaps = {}
        for ceiling_view, ceiling in ceilings.items():
          shared = [s for s in mious if reference[s] is not None and ceiling[s] is not None]
          gaps[ceiling_view] = le.gap_closed([mious[s] for s in shared],
                                             [reference[s] for s in shared],
                                             [ceiling[s] for s in shared])
        row = {'fraction': fraction, 'view': view, 'arm': arm, 'miou': mious,
               'difference_to_unet': paired(mious, reference), 'gap_closed': gaps}
        if arm in le.TUNED_AS:
          base = le.TUNED_AS[arm]
          row['difference_to_base'] = {'arm': base, **paired(
              mious, {s: miou_of(view, fraction, base, s) for s in seeds})}
        rows.append(row)
  return rows


def markdown(rows: List[Dict]) -> str:
  views = list(le.WEAK_VIEWS)
  lines = ['| labels | weak view | arm | seeds | test mIoU per seed | Δ to unet, 95% interval | ' +
           ' | '.join(f'gap closed, {v} ceiling' for v in views) +
           ' | Δ to the arm it builds on |',
           '|---|---|---|---|---|---|' + '---|' * len(views) + '---|']
  for row in rows:
    arm = row['arm']
    mious = ' / '.join(f'{100 * m:.1f}' for m in row['miou'].values())
    difference = '(reference)' if arm == le.REFERENCE else le.fmt_interval(
        row['difference_to_unet'])
    gaps = [le.fmt_gap(row['gap_closed'][v], arm) for v in views]  # '' for reference, ceiling.
    seeds = ', '.join(str(s) for s in row['miou'])
    base = row.get('difference_to_base')
    on_base = f'{base["arm"]}: {le.fmt_interval(base)}' if base else ''
    lines.append(f'| {100 * le.FRACTIONS[row["fraction"]]:g}% | {row["view"]} | {arm} | '
                 f'{seeds} | {mious} | {difference} | ' + ' | '.join(gaps) + f' | {on_base} |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help="label_efficiency.py's --workdir.")
  parser.add_argument('--output', default='', help='Also the rows as JSON lines here.')
  parser.add_argument('--recorded', action='append', default=[],
                      help="An earlier --output: the figures of runs whose folders are gone.")
  args = parser.parse_args(argv)
  recorded = {}
  for path in args.recorded:
    try:
      recorded.update(read_recorded([path]))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
      parser.error(f'--recorded={path}: expected a JSON-lines file this command wrote '
                   f'({type(e).__name__}: {e})')
  rows = compare(args.workdir, recorded=recorded)
  print(markdown(rows), end='')
  if args.output:
    le.write_jsonl(args.output, rows)


if __name__ == '__main__':
  main()
