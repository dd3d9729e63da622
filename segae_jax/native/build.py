"""Build the oneDNN convolution handlers (onednn_conv.cc) into a shared library.

`make install` runs `python -m segae_jax.native.build` after installing the package: g++ compiles
the handlers against the XLA FFI headers of the installed jaxlib (`jax.ffi.include_dir()`) and
the oneDNN headers and library of PyPI's `onednn-devel-cpu-gomp` / `onednn-cpu-gomp` (installed
under the environment's prefix, `<prefix>/include` and `<prefix>/lib`). The library goes to
`library_path()`, written to a temporary name first so a failed build leaves nothing behind.

A build that cannot run (no compiler, no oneDNN, another platform) prints one warning and exits 0:
the models then keep XLA's convolutions (segae_jax.native.onednn falls back on its own).
"""
import os
import pathlib
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence

SOURCE = pathlib.Path(__file__).with_name('onednn_conv.cc')
LIBRARY_NAME = 'libsegae_onednn_conv.so'


def prefix() -> pathlib.Path:
  """Where pip put the oneDNN wheels' data files: the environment's prefix (a venv's root)."""
  return pathlib.Path(sys.prefix)


def library_path() -> pathlib.Path:
  """The built handler library: `<prefix>/lib/libsegae_onednn_conv.so`, beside libdnnl.so.3."""
  return prefix() / 'lib' / LIBRARY_NAME


def command(output: pathlib.Path, defines: Sequence[str] = ()) -> List[str]:
  """The g++ command line that compiles SOURCE into `output` (rpath to the oneDNN library);
  `defines` (e.g. 'SEGAE_ONEDNN_NO_CACHE') build the variants benchmarks compare."""
  import jax  # pylint: disable=import-outside-toplevel
  lib = prefix() / 'lib'
  return [os.environ.get('CXX', 'g++'), '-O2', '-std=c++17', '-shared', '-fPIC',
          *(f'-D{d}' for d in defines),
          # jaxlib's FFI headers raise warnings under g++ 12; they are not ours to fix.
          '-w', f'-I{jax.ffi.include_dir()}', f'-I{prefix() / "include"}', str(SOURCE),
          '-o', str(output), f'-L{lib}', '-l:libdnnl.so.3', f'-Wl,-rpath,{lib}']


def missing() -> Optional[str]:
  """Why a build cannot run here (one line), or None."""
  if not sys.platform.startswith('linux'):
    return f'oneDNN handlers are built on Linux only (this is {sys.platform})'
  if shutil.which(os.environ.get('CXX', 'g++')) is None:
    return 'no C++ compiler (g++) on PATH'
  for path in (prefix() / 'include' / 'oneapi' / 'dnnl' / 'dnnl.hpp',
               prefix() / 'lib' / 'libdnnl.so.3'):
    if not path.exists():
      return f'{path} is missing (pip packages onednn-cpu-gomp, onednn-devel-cpu-gomp)'
  return None


def build(output: Optional[pathlib.Path] = None, defines: Sequence[str] = ()) -> Optional[str]:
  """Compile the handlers into `output` (default `library_path()`), atomically; `defines` as
  in `command`.

  Returns:
    None on success, else a one-line reason (nothing is written then).
  """
  output = pathlib.Path(output or library_path())
  reason = missing()
  if reason:
    return reason
  partial = output.with_name(output.name + '.partial')
  result = subprocess.run(command(partial, defines), capture_output=True, text=True, check=False)
  if result.returncode != 0:
    partial.unlink(missing_ok=True)
    lines = (result.stderr or result.stdout).strip().splitlines()
    errors = [line for line in lines if 'error' in line] or lines or [f'exit {result.returncode}']
    return f'g++ failed on {SOURCE.name}: {errors[0]}'
  os.replace(partial, output)
  return None


def main() -> int:
  reason = build()
  if reason:
    print(f'warning: oneDNN convolutions not built ({reason}); XLA convolutions will be used',
          file=sys.stderr)
  else:
    print(f'built {library_path()}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
