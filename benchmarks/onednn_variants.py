"""What the oneDNN handlers' choices are worth: `python -m benchmarks.onednn_variants`.

Builds segae_jax/native/onednn_conv.cc four ways into a temporary folder and times the two
reference train steps (benchmarks.run --only=reference --conv_impl=onednn, a fresh process per
variant, SEGAE_ONEDNN_LIBRARY pointing at it), in two interleaved rounds:
  variant/shipped        primitives cached per geometry, weights in oneDNN's blocked layout
                         (reordered from HWIO on each call);
  variant/hwio_weights   the primitives read the HWIO kernel as it lies (no reorder);
  variant/no_cache       every primitive created afresh on each call;
  variant/serial         one oneDNN call at a time in the process (a mutex), where XLA would
                         run independent ones (a layer's input and kernel gradients) at once.
One JSON line per variant and round (images/s of each model), written to --output too.
"""
import argparse
import json
import os
import tempfile

from benchmarks.common import RESULTS, emit, write_output

VARIANTS = {'shipped': (), 'hwio_weights': ('SEGAE_ONEDNN_HWIO_WEIGHTS',),
            'no_cache': ('SEGAE_ONEDNN_NO_CACHE',), 'serial': ('SEGAE_ONEDNN_SERIAL',)}


def main(argv=None) -> None:
  from benchmarks import side_by_side
  from segae_jax.native import build
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--variants', default=','.join(VARIANTS),
                      help=f'comma-separated subset of {", ".join(VARIANTS)}')
  parser.add_argument('--output', default=os.path.join(RESULTS, 'variants.json'))
  args = parser.parse_args(argv)
  names = args.variants.split(',')
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f'unknown --variants {", ".join(unknown)}; known: {", ".join(VARIANTS)}')
  figures = []
  with tempfile.TemporaryDirectory() as tmp:
    libraries = {}
    for name in names:
      defines = VARIANTS[name]
      libraries[name] = os.path.join(tmp, f'{name}.so')
      reason = build.build(libraries[name], defines)
      if reason:
        raise SystemExit(f'variant {name}: {reason}')
    for round_ in range(args.rounds):
      for name, library in libraries.items():
        emit(figures, {'figure': f'variant/{name}', 'round': round_,
                       'defines': list(VARIANTS[name]),
                       **side_by_side.reference_steps({'SEGAE_ONEDNN_LIBRARY': library})})
  write_output(args.output, json.dumps(figures, indent=1))


if __name__ == '__main__':
  main()
