"""What the benchmark modules share: where the checkout and the result ledgers lie, printing a
figure, writing an output whole, and reading the JSON lines of a benchmark subprocess.

It imports no other benchmark module, so the modules' imports run one way (each imports this;
run.py's figures are imported by the modules that time its steps, never the reverse).
"""
import json
import os
import subprocess
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The figures each benchmark writes by default, and the dated ledgers docs/*.md cite: apart from
# the code, so that benchmarks/ lists modules only.
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')


def dated_ledger(name: str) -> str:
  """RESULTS/<name>_<today, YYYY-MM-DD>.jsonl: a benchmark's default ledger, one per day."""
  return os.path.join(RESULTS, f'{name}_{time.strftime("%Y-%m-%d")}.jsonl')


def write_output(path: str, text: str) -> None:
  """`text` into the benchmark's output `path`, whole or not at all (a temporary file beside it,
  then a rename: an earlier ledger stays until the new one is complete). A write that fails
  (a full disk, a read-only folder) is one line naming the file on stderr and exit status 2."""
  # Imported here: the timing drivers import this module and must not pay for JAX.
  from segae_jax import cli  # pylint: disable=import-outside-toplevel
  from segae_jax.training import writers  # pylint: disable=import-outside-toplevel
  with cli.user_errors():
    writers.write_text(path, text)


def emit(results: List[Dict], figure: Dict) -> None:
  """Prints `figure` as one JSON line (flushed, for a parent reading json_lines) and appends it
  to `results`."""
  print(json.dumps(figure), flush=True)
  results.append(figure)


def json_lines(args: List[str], what: str, env: Optional[Dict[str, str]] = None,
               timeout: float = 900, least: int = 0) -> List[Dict]:
  """The JSON lines (those starting with '{') that a benchmark subprocess prints, run from the
  repository root with `env` added to this process's environment.

  Raises:
    RuntimeError: `what` failed (a non-zero exit, or fewer than `least` JSON lines), with the
      end of its stderr.
  """
  proc = subprocess.run(args, cwd=ROOT, env={**os.environ, **(env or {})},
                        capture_output=True, text=True, timeout=timeout, check=False)
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode or len(lines) < least:
    raise RuntimeError(f'{what} failed: {proc.stderr[-2000:]}')
  return lines
