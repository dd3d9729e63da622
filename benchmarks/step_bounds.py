"""What making a part of the unet64 step free would buy: `python -m benchmarks.step_bounds`.

Times the float32 unet64 reference step (benchmarks.run.train_step_figure) with parts removed,
each variant in a fresh process, the variants interleaved over --rounds:
  bound/base       the step as shipped.
  bound/pool_free  the max-pool's backward only broadcasts each window's gradient over the window
                   (it writes dx once and finds no maximum): the least any max-pool backward, a
                   oneDNN pooling primitive included, must do.
  bound/no_norm    BatchNorm removed (model.norm='none', so the convolutions gain biases): the
                   most that fusing BatchNorm into the convolutions could save.
  bound/both       both at once.
pool_free's gradients are wrong and no_norm is another model: these are upper bounds of a
speed-up, for deciding what to build next, never a way to train. One JSON line per variant and
round (images/s, median and fastest step), written to --output too.
"""
import argparse
import json
import os
import sys
from typing import Dict

from benchmarks.common import RESULTS, json_lines, write_output

VARIANTS = ('base', 'pool_free', 'no_norm', 'both')


def broadcast_pool_gradient():
  """A 2x2 max-pool with the same forward as unet.max_pool_2x2 and the cheapest backward that
  still writes a full dx: each window's gradient broadcast over its four inputs."""
  import jax
  import jax.numpy as jnp

  @jax.custom_vjp
  def pool(x):
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))

  def forward(x):
    return pool(x), x.shape

  def backward(shape, g):
    b, h, w, c = shape
    window = jnp.broadcast_to(g[:, :, None, :, None, :], (b, h // 2, 2, w // 2, 2, c))
    return (window.reshape(shape),)

  pool.defvjp(forward, backward)
  return pool


def child(variant: str) -> Dict:
  """The unet64 step figure of one variant (run in its own process)."""
  from benchmarks import run
  from segae_jax.models import unet
  config = run.reference_config('unet64')
  if variant in ('no_norm', 'both'):
    config.model.norm = 'none'
  if variant in ('pool_free', 'both'):
    # The encoder calls the module's max_pool_2x2 at trace time; this process builds nothing else.
    unet.max_pool_2x2 = broadcast_pool_gradient()
  figure = run.train_step_figure('unet64', config, 0.0)
  return {'figure': f'bound/{variant}', **{key: figure[key] for key in (
      'images_per_s', 'step_s_median', 'step_s_min', 'conv_path', 'compile_s')}}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--output', default=os.path.join(RESULTS, 'step_bounds.json'))
  parser.add_argument('--child', choices=VARIANTS, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child)), flush=True)
    return
  figures = []
  for round_ in range(args.rounds):
    for variant in VARIANTS:
      lines = json_lines([sys.executable, '-m', 'benchmarks.step_bounds', f'--child={variant}'],
                         f'variant {variant}', least=1)
      figure = {**lines[-1], 'round': round_}
      print(json.dumps(figure), flush=True)
      figures.append(figure)
  write_output(args.output, json.dumps(figures, indent=1))


if __name__ == '__main__':
  main()
