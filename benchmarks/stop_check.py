"""The per-step host cost of agreeing on a stop in a multi-process run (`python -m
benchmarks.stop_check`; JSON lines): two processes on loopback (jax.distributed, 2 CPU devices
each) call each mechanism once per step for --steps steps, between steps of simulated device work
(--work_ms of sleep: the host is free while the device computes), and report the time each call
takes on the host.

Figures:
  stop_check/allgather     the agreement before: multihost_utils.process_allgather of each
                           process's received signal, every step (a collective through the
                           devices: the host waits for the other process).
  stop_check/sync_point    training.signals today: multihost_utils.reached_preemption_sync_point
                           (the coordination service; answered locally until a notice arrives).
  Each: per-call median and mean in microseconds over the steps, of process 0 and 1.

Nothing else should run meanwhile (a timing).
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

MECHANISMS = ('allgather', 'sync_point')


def child(mechanism: str, process_id: int, port: int, steps: int, work_ms: float) -> Dict:
  import jax  # pylint: disable=import-outside-toplevel
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id,
                             coordinator_bind_address=f'127.0.0.1:{port}')
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  check = {
      'allgather': lambda step: int(np.max(multihost_utils.process_allgather(np.int32(0)))),
      'sync_point': multihost_utils.reached_preemption_sync_point,
  }[mechanism]
  times = []
  for step in range(1, steps + 1):
    time.sleep(work_ms / 1e3)
    start = time.perf_counter()
    check(step)
    times.append(time.perf_counter() - start)
  times = np.asarray(times[5:]) * 1e6  # The first calls set up connections.
  return {'process': process_id, 'median_us': float(np.median(times)),
          'mean_us': float(times.mean()), 'calls': len(times)}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def measure(mechanism: str, steps: int, work_ms: float) -> Dict:
  port = free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'benchmarks.stop_check', f'--child={mechanism}', f'--process_id={i}',
       f'--port={port}', f'--steps={steps}', f'--work_ms={work_ms}'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  rows = []
  for p, (out, err) in zip(procs, outputs):
    if p.returncode:
      raise RuntimeError(f'{mechanism} child failed:\n{err[-2000:]}')
    rows.append(json.loads(out.strip().splitlines()[-1]))
  return {'figure': f'stop_check/{mechanism}', 'steps': steps, 'work_ms': work_ms,
          'median_us': [r['median_us'] for r in rows], 'mean_us': [r['mean_us'] for r in rows]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--work_ms', type=float, default=20.0)
  parser.add_argument('--output', default='')
  parser.add_argument('--child', choices=MECHANISMS, help=argparse.SUPPRESS)
  parser.add_argument('--process_id', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--port', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child, args.process_id, args.port, args.steps, args.work_ms)))
    return
  lines: List[Dict] = []
  for mechanism in MECHANISMS:
    figure = {'date': time.strftime('%Y-%m-%d'), **measure(mechanism, args.steps, args.work_ms)}
    print(json.dumps(figure), flush=True)
    lines.append(figure)
  if args.output:
    with open(args.output, 'a') as f:
      f.writelines(json.dumps(line) + '\n' for line in lines)


if __name__ == '__main__':
  main()
