"""The label-efficiency grid under each weak view, side by side: `python -m benchmarks.weak_views
--workdir=DIR [--output=FILE.jsonl]` reads back the finished runs of DIR's grids
(label_efficiency.runs_dir: DIR/runs with flips, DIR/runs_flips_scale_crop with scale-crop),
trains nothing, and prints a Markdown table: per fraction, weak view and arm, the test mIoU of
each seed, the paired difference to the same view's reference with its 95% interval, and the
fraction of the gap to each view's all-masks ceiling that the arm closes.

Why both ceilings: a weak view the reference gains from can cost the all-masks arm (measured on
the scenes: scale-crop +1.7 validation points for the reference, 4 test points less for the
100% arm), and a lower ceiling makes any gap look more closed; the higher one is the fair
yardstick.
"""
import argparse
import os
from typing import Dict, List, Optional

from benchmarks import label_efficiency as le

SEEDS = (0, 1, 2)
CEILING = 'full'
# Where the harness files the arms of ARM_FRACTION (one run per seed): under the first of its
# --fractions, 5pct in every grid run so far.
CEILING_FRACTION = '5pct'


def test_miou(workdir: str, view: str, fraction: str, arm: str, seed: int) -> Optional[float]:
  """The final test mIoU of a finished grid run (None if it has not finished)."""
  results = le.finished(os.path.join(workdir, le.runs_dir(view), fraction, arm, f'seed{seed}'))
  return None if results is None else float(results['test']['miou'])


def compare(workdir: str, seeds=SEEDS) -> List[Dict]:
  """One row per (fraction, view, arm) with a finished seed: {'fraction', 'view', 'arm',
  'miou': {seed: mIoU}, 'difference_to_unet': paired_interval, 'gap_closed': {ceiling's view:
  fraction closed over the seeds it shares}} (mIoU as fractions in [0, 1])."""
  ceilings = {view: {s: test_miou(workdir, view, CEILING_FRACTION, CEILING, s) for s in seeds}
              for view in le.WEAK_VIEWS}
  rows = []
  for fraction in le.FRACTIONS:
    for view in le.WEAK_VIEWS:
      reference = {s: test_miou(workdir, view, fraction, le.REFERENCE, s) for s in seeds}
      for arm in le.ARMS:
        if arm in le.ARM_FRACTION and fraction != CEILING_FRACTION:
          continue  # One run per seed, shown once.
        mious = {s: m for s in seeds
                 if (m := test_miou(workdir, view, fraction, arm, s)) is not None}
        if not mious:
          continue
        paired = [s for s in mious if reference[s] is not None]
        gaps = {}
        for ceiling_view, ceiling in ceilings.items():
          shared = [s for s in paired if ceiling[s] is not None]
          gaps[ceiling_view] = le.gap_closed([mious[s] for s in shared],
                                             [reference[s] for s in shared],
                                             [ceiling[s] for s in shared])
        rows.append({'fraction': fraction, 'view': view, 'arm': arm, 'miou': mious,
                     'difference_to_unet': le.paired_interval(
                         [mious[s] for s in paired], [reference[s] for s in paired]),
                     'gap_closed': gaps})
  return rows


def markdown(rows: List[Dict]) -> str:
  views = list(le.WEAK_VIEWS)
  lines = ['| labels | weak view | arm | seeds | test mIoU per seed | Δ to unet, 95% interval | ' +
           ' | '.join(f'gap closed, {v} ceiling' for v in views) + ' |',
           '|---|---|---|---|---|---|' + '---|' * len(views)]
  for row in rows:
    arm = row['arm']
    mious = ' / '.join(f'{100 * m:.1f}' for m in row['miou'].values())
    difference = '(reference)' if arm == le.REFERENCE else le.fmt_interval(
        row['difference_to_unet'])
    gaps = [le.fmt_gap(row['gap_closed'][v], arm) for v in views]  # '' for reference, ceiling.
    seeds = ', '.join(str(s) for s in row['miou'])
    lines.append(f'| {100 * le.FRACTIONS[row["fraction"]]:g}% | {row["view"]} | {arm} | '
                 f'{seeds} | {mious} | {difference} | ' + ' | '.join(gaps) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help="label_efficiency.py's --workdir.")
  parser.add_argument('--output', default='', help='Also the rows as JSON lines here.')
  args = parser.parse_args(argv)
  rows = compare(args.workdir)
  print(markdown(rows), end='')
  if args.output:
    le.write_jsonl(args.output, rows)


if __name__ == '__main__':
  main()
