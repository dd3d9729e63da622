"""PyTorch's side of the bfloat16 side-by-side row: ../shared/bench/torch_ref.py's models and train
step, run under `torch.autocast('cpu', dtype=torch.bfloat16)`.

The shared reference has no mixed-precision flag, so this script imports its models and losses
(unchanged, from its own file) and times the same step in the same way (`--warmup` steps, then
the mean of `--steps`, with a final host sync), with the forward and loss under autocast: its
convolutions and matmuls run in bfloat16, parameters, BatchNorm statistics and Adam stay float32
(PyTorch's CPU autocast lists). segae_jax's counterpart is `config.compute_dtype='bfloat16'`.

  .venv-torchref/bin/python benchmarks/torch_ref.py unet64 --bf16 [--compile]

Prints one JSON line, as the shared script does, plus "dtype".
Runs only under a Python with PyTorch (`make bench` makes .venv-torchref); the project itself
never imports PyTorch.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time

import torch

SHARED_REF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'bench', 'torch_ref.py')


def load_shared_reference():
  """The shared torch_ref.py as a module (its models VAE, UNet and losses vae_loss, unet_loss)."""
  spec = importlib.util.spec_from_file_location('shared_torch_ref', SHARED_REF)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # torch.compile (dynamo) looks the models' module up by name
  spec.loader.exec_module(module)
  return module


def model_and_batch(ref, name: str):
  """(model, batch tuple, loss function, batch size) of a reference model, seeded as the shared
  script seeds them."""
  torch.manual_seed(0)
  if name == 'vae_fmnist':
    return ref.VAE(), (torch.rand(256, 1, 28, 28),), ref.vae_loss, 256
  x, y = torch.rand(32, 1, 64, 64), torch.randint(0, 11, (32, 64, 64))
  return ref.UNet(), (x, y), ref.unet_loss, 32


def time_step(step, warmup: int, steps: int) -> float:
  """Seconds per step: the mean over `steps` after `warmup`, synchronised on the last loss."""
  for _ in range(warmup):
    step().item()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  loss.item()
  return (time.perf_counter() - start) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('model', choices=['vae_fmnist', 'unet64'])
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--compile', action='store_true', help='torch.compile (inductor)')
  parser.add_argument('--bf16', action='store_true',
                      help='forward and loss under torch.autocast(cpu, bfloat16)')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  model, batch, loss_fn, batch_size = model_and_batch(load_shared_reference(), args.model)
  optimizer = torch.optim.Adam(model.parameters(), 1e-3)

  def step():
    optimizer.zero_grad(set_to_none=True)
    precision = (torch.autocast('cpu', dtype=torch.bfloat16) if args.bf16
                 else contextlib.nullcontext())
    with precision:
      loss = loss_fn(model, *batch)
    loss.backward()
    optimizer.step()
    return loss

  seconds = time_step(torch.compile(step) if args.compile else step, args.warmup, args.steps)
  print(json.dumps({'model': args.model, 'framework': 'torch-' + torch.__version__,
                    'dtype': 'bfloat16' if args.bf16 else 'float32', 'batch': batch_size,
                    'step_ms': round(seconds * 1e3, 2),
                    'images_per_s': round(batch_size / seconds, 1)}))


if __name__ == '__main__':
  main()
