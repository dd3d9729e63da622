"""Makes sure the real Fashion-MNIST IDX files are on this machine (`make data` runs this).

Order: files already present -> Debian's `dataset-fashion-mnist` via apt-get (when running as
root with apt-get available) -> the upstream download into ~/.cache/segae_jax/fashion-mnist.
When all fail it prints one line saying how to get the files and exits with status 2.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

from segae_jax.data import fashion_mnist as fm
from segae_jax.errors import UserInputError

UPSTREAM_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'


def _have_files() -> bool:
  return any(os.path.isdir(d) and not fm.missing_files(d) for d in fm.DEFAULT_IDX_DIRS)


def _try_apt() -> bool:
  if shutil.which('apt-get') is None or os.geteuid() != 0:
    return False
  cmd = ['apt-get', 'install', '-y', '-qq', 'dataset-fashion-mnist']
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  ok = subprocess.run(cmd, env=env, capture_output=True).returncode == 0
  if not ok:  # A new machine has no package lists yet.
    subprocess.run(['apt-get', 'update', '-qq'], env=env, capture_output=True)
    ok = subprocess.run(cmd, env=env, capture_output=True).returncode == 0
  return ok and not fm.missing_files(fm.DEBIAN_DIR)


def _try_download() -> bool:
  os.makedirs(os.path.dirname(fm.CACHE_DIR), exist_ok=True)
  # Download into a temporary folder, check every file, then move it into place: no partial data.
  tmp = tempfile.mkdtemp(dir=os.path.dirname(fm.CACHE_DIR), prefix='.fashion-mnist-')
  try:
    for name in fm.IDX_FILES:
      with urllib.request.urlopen(UPSTREAM_URL + name, timeout=60) as response, \
          open(os.path.join(tmp, name), 'wb') as f:
        shutil.copyfileobj(response, f)
      fm.read_idx(os.path.join(tmp, name))  # Checks the SHA-256 of the contents.
    if os.path.isdir(fm.CACHE_DIR):
      shutil.rmtree(fm.CACHE_DIR)
    os.rename(tmp, fm.CACHE_DIR)
    return True
  except (OSError, UserInputError) as e:
    print(f'fetch: upstream download failed: {e}', file=sys.stderr)
    return False
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
  if _have_files():
    return 0
  print('fetch: Fashion-MNIST not found; trying apt-get install dataset-fashion-mnist', file=sys.stderr)
  if _try_apt():
    return 0
  print(f'fetch: trying the upstream download from {UPSTREAM_URL}', file=sys.stderr)
  if _try_download():
    return 0
  print('error: could not get Fashion-MNIST: install Debian\'s dataset-fashion-mnist (apt-get '
        f'install dataset-fashion-mnist) or put {", ".join(fm.IDX_FILES)} into {fm.CACHE_DIR}',
        file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main())
