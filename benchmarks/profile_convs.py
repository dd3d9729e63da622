"""Where a CPU training step spends its time: `python -m benchmarks.profile_convs`.

Two profiles, printed as JSON lines (and written to --output):
  layer/<model>/<layer>   Each convolution of the reference models (vae_fmnist, unet64 of
                          ../shared/bench/README.md) alone at the model's batch size: milliseconds
                          (median of 10 after 2 warm-up calls) and GFLOP/s of the forward, input
                          gradient and kernel gradient on each conv_impl path (xla, matmul_grad,
                          onednn where it loads), beside the matmul peak.
  pool/unet64/<shape>     The U-Net's 2x2 max-pool after a ReLU at unet64's three pooled sizes,
                          forward + backward in milliseconds: the model's max_pool_2x2 (gradient
                          to each window's first maximum by argmax), jnp.max's own gradient
                          (compare-and-divide) and nn.max_pool.
  step/<model>/<category> One jax.profiler trace of 3 train steps of the reference model as
                          configured (conv_impl 'auto'), each executed XLA op assigned a category
                          from the optimized HLO (the root instruction of its fusion: convolution
                          forward or input gradient, dot, copies/slices, elementwise, ...):
                          milliseconds per step and share. XLA:CPU runs independent ops on both
                          cores at once, so the shares add up to more wall time than the step takes.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Dict, List

import numpy as np

from benchmarks.common import RESULTS, emit, write_output

# (model, layer, input shape, kernel shape, strides, padding, transposed)
LAYERS = [
    ('vae_fmnist', 'encoder/conv0', (256, 28, 28, 1), (3, 3, 1, 32), (2, 2), 'SAME', False),
    ('vae_fmnist', 'encoder/conv1', (256, 14, 14, 32), (3, 3, 32, 64), (2, 2), 'SAME', False),
    ('vae_fmnist', 'decoder/deconv0', (256, 7, 7, 64), (3, 3, 64, 32), (2, 2), 'SAME', True),
    ('vae_fmnist', 'decoder/out', (256, 14, 14, 32), (3, 3, 32, 1), (2, 2), 'SAME', True),
    ('unet64', 'level0 conv 1->32', (32, 64, 64, 1), (3, 3, 1, 32), (1, 1), 'SAME', False),
    ('unet64', 'level0 conv 32->32', (32, 64, 64, 32), (3, 3, 32, 32), (1, 1), 'SAME', False),
    ('unet64', 'level1 conv 64->64', (32, 32, 32, 64), (3, 3, 64, 64), (1, 1), 'SAME', False),
    ('unet64', 'up level1 conv 128->64', (32, 32, 32, 128), (3, 3, 128, 64), (1, 1), 'SAME',
     False),
    ('unet64', 'level2 conv 128->128', (32, 16, 16, 128), (3, 3, 128, 128), (1, 1), 'SAME',
     False),
    ('unet64', 'level3 conv 256->256', (32, 8, 8, 256), (3, 3, 256, 256), (1, 1), 'SAME', False),
    ('unet64', 'up 8->16 (2x2 transposed)', (32, 8, 8, 256), (2, 2, 256, 128), (2, 2), 'VALID',
     True),
    ('unet64', 'up 32->64 (2x2 transposed)', (32, 32, 32, 64), (2, 2, 64, 32), (2, 2), 'VALID',
     True),
]
NHWC = ('NHWC', 'HWIO', 'NHWC')


def _median_ms(fn, *args, repeats: int = 10) -> float:
  import jax
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def _three_parts(conv, x, w, dy) -> Dict[str, float]:
  """Milliseconds of conv's forward, input gradient and kernel gradient, each jitted alone (under
  jit the unused gradient of a vjp is dropped)."""
  import jax
  return {'forward_ms': _median_ms(jax.jit(conv), x, w),
          'input_grad_ms': _median_ms(jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[0]),
                                      x, w, dy),
          'kernel_grad_ms': _median_ms(jax.jit(lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[1]),
                                       x, w, dy)}


def _layer_paths(x_shape, k_shape, strides, padding, transposed):
  """{path name: conv(x, w)} for XLA, the matmul kernel gradient and (if it loads) oneDNN."""
  from jax import lax
  from segae_jax.models import conv_ops
  from segae_jax.native import onednn
  hooks = {'xla': lax.conv_general_dilated, 'matmul_grad': conv_ops.conv_general_dilated}
  if onednn.available():
    hooks['onednn'] = conv_ops.onednn_conv_general_dilated
  if transposed:
    return {name: (lambda hook: lambda x, w: conv_ops.conv_transpose(x, w, strides, padding,
                                                                     conv=hook))(hook)
            for name, hook in hooks.items()}
  return {name: (lambda hook: lambda x, w: hook(x, w, strides, padding,
                                                dimension_numbers=NHWC))(hook)
          for name, hook in hooks.items()}


def layer_figures() -> List[Dict]:
  """Per layer: each path's forward / input-gradient / kernel-gradient milliseconds and GFLOP/s
  (the forward's FLOPs; each gradient costs the same), against the matmul peak measured here."""
  import jax
  from benchmarks.run import matmul_peak
  peak = matmul_peak()['gflop_per_s']
  figures = []
  for model, layer, x_shape, k_shape, strides, padding, transposed in LAYERS:
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
    w = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.1
    paths = _layer_paths(x_shape, k_shape, strides, padding, transposed)
    y = jax.eval_shape(paths['xla'], x, w)
    dy = jax.random.normal(jax.random.PRNGKey(2), y.shape)
    # Same kernel gradient from every path, or the timing means nothing.
    grads = {name: np.asarray(jax.jit(lambda x, w, dy, c=conv: jax.vjp(c, x, w)[1](dy)[1])(
        x, w, dy)) for name, conv in paths.items()}
    # Forward FLOPs over the real (not dilation-zero) inputs: 2 * outputs * taps * cin * cout
    # / (stride^2 for transposed layers, whose taps each see one input in stride^2 outputs).
    gflop = (2 * np.prod(y.shape[:3]) * np.prod(k_shape)
             / (np.prod(strides) if transposed else 1) / 1e9)
    figure = {'figure': f'layer/{model}/{layer}', 'input': list(x_shape),
              'kernel': list(k_shape), 'strides': list(strides), 'padding': padding,
              'transposed': transposed, 'forward_gflop': gflop, 'matmul_peak_gflop_per_s': peak}
    for name, conv in paths.items():
      for part, ms in _three_parts(conv, x, w, dy).items():
        figure[f'{name}_{part}'] = ms
        figure[f'{name}_{part[:-3]}_gflop_per_s'] = gflop / ms * 1e3
      figure[f'{name}_kernel_grad_max_rel_diff'] = float(
          np.max(np.abs(grads[name] - grads['xla'])) / np.max(np.abs(grads['xla'])))
    figures.append(figure)
  return figures


def op_categories(hlo_text: str) -> Dict[str, tuple]:
  """Instruction name -> (category, op_name) from optimized HLO text."""
  roots, current = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r'^%?(\S+) .*\{$', line)
    if header and not line.startswith(' '):
      current = header.group(1)
    root = re.match(r'\s*ROOT %\S+ = \S+ ([a-z\-]+)\(', line)
    if root and current:
      roots[current] = root.group(1)
  out = {}
  for line in hlo_text.splitlines():
    inst = re.match(r'\s*(?:ROOT )?%(\S+) = \S+ ([a-z\-]+)\(', line)
    if not inst:
      continue
    calls = re.search(r'calls=%(\S+?)[,\s]', line)
    opcode = roots.get(calls.group(1), inst.group(2)) if calls else inst.group(2)
    op_name = re.search(r'op_name="([^"]+)"', line)
    op_name = op_name.group(1) if op_name else ''
    target = re.search(r'custom_call_target="SegaeOnednnConv(\w+)"', line)
    if opcode == 'custom-call' and target:
      category = {'Forward': 'oneDNN convolution forward',
                  'BackwardData': 'oneDNN convolution input gradient',
                  'BackwardWeights': 'oneDNN convolution kernel gradient'}[target.group(1)]
    elif opcode == 'convolution':
      category = 'convolution input gradient' if 'transpose(' in op_name else (
          'convolution forward')
    elif opcode == 'dot':
      category = 'dot (dense layers, matmul kernel gradients)'
    elif opcode in ('slice', 'bitcast', 'copy', 'transpose', 'pad', 'concatenate'):
      category = 'copies (slices, pads, transposes, concatenations)'
    elif opcode in ('reduce', 'reduce-window', 'select-and-scatter'):
      category = 'reductions'
    else:
      category = 'elementwise (' + opcode + ')' if opcode in ('select', 'maximum') else (
          'elementwise (other)')
    out[inst.group(1)] = (category, op_name)
  return out


def step_figures(name: str, steps: int = 3) -> List[Dict]:
  import jax
  from benchmarks import run
  config = run.reference_config(name)
  dataset, state, train_fn, _ = run.setup_benchmark(config)
  batch = next(run.train_iterator(config, dataset))
  step = jax.jit(train_fn, donate_argnums=(0,))
  rng = jax.random.PRNGKey(1)
  hlo = step.lower(state, batch, rng).compile().as_text()
  for _ in range(2):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        state, metrics = step(state, batch, rng)
      jax.block_until_ready(metrics)
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    trace_file = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
    events = json.load(gzip.open(trace_file))['traceEvents']
  categories = op_categories(hlo)
  totals = collections.defaultdict(float)
  top = collections.defaultdict(list)
  for event in events:
    if event.get('ph') != 'X' or event['name'] not in categories:
      continue
    category, op_name = categories[event['name']]
    totals[category] += event['dur'] / 1e3 / steps
    top[category].append((event['dur'] / 1e3 / steps, op_name.replace('jit(train_step)/', '')))
  summed = sum(totals.values())
  figures = []
  for category, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
    largest = sorted(top[category], reverse=True)[:3]
    figures.append({'figure': f'step/{name}/{category}', 'ms_per_step': ms,
                    'share_of_op_time': ms / summed, 'step_wall_ms_traced': wall_ms,
                    'largest_ops': [f'{ms:.1f} ms {op}' for ms, op in largest]})
  return figures


POOL_SHAPES = [(32, 64, 64, 32), (32, 32, 32, 64), (32, 16, 16, 128)]  # unet64 level 0-2 outputs.


def pool_figures() -> List[Dict]:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from segae_jax.models.unet import max_pool_2x2

  def jnp_max(x):
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))

  pools = {'max_pool_2x2_ms': max_pool_2x2, 'jnp_max_grad_ms': jnp_max,
           'nn_max_pool_ms': lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))}
  figures = []
  for shape in POOL_SHAPES:
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    times = {}
    for name, pool in pools.items():
      step = jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(nn.relu(x)) ** 2)))
      times[name] = _median_ms(step, x, repeats=20)
    figures.append({'figure': f'pool/unet64/{"x".join(map(str, shape))}', 'input': list(shape),
                    **times})
  return figures


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='layers,pool,step',
                      help='comma-separated: layers, pool, step')
  parser.add_argument('--output', default=os.path.join(RESULTS, 'profile.json'))
  args = parser.parse_args(argv)
  figures = []
  parts = args.only.split(',')
  if 'layers' in parts:
    for figure in layer_figures():
      emit(figures, figure)
  if 'pool' in parts:
    for figure in pool_figures():
      emit(figures, figure)
  if 'step' in parts:
    for name in ('vae_fmnist', 'unet64'):
      for figure in step_figures(name):
        emit(figures, figure)
  write_output(args.output, json.dumps(figures, indent=1))


if __name__ == '__main__':
  main()
