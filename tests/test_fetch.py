"""The data step's upstream-download fallback, against a real HTTP server on 127.0.0.1."""
import functools
import http.server
import os
import shutil
import threading

import pytest

from segae_jax.data import fashion_mnist as fm
from segae_jax.data import fetch


@pytest.fixture
def server(tmp_path):
  """Serves a folder over HTTP on loopback, like the upstream site."""
  root = tmp_path / 'www'
  root.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield root, f'http://127.0.0.1:{httpd.server_address[1]}/'
  httpd.shutdown()


@pytest.fixture
def real_idx_dir():
  """Where this machine keeps the real files (Debian's package or the download cache)."""
  return fm.find_idx_dir('')


@pytest.fixture
def no_local_copy(real_idx_dir, tmp_path, monkeypatch):
  cache = tmp_path / 'cache' / 'fashion-mnist'
  monkeypatch.setattr(fm, 'CACHE_DIR', str(cache))
  monkeypatch.setattr(fm, 'DEFAULT_IDX_DIRS', (str(tmp_path / 'debian'), str(cache)))
  monkeypatch.setattr(fetch, '_try_apt', lambda: False)  # Tests must not (un)install packages.
  return cache


def test_upstream_download_fills_cache(server, real_idx_dir, no_local_copy, monkeypatch):
  root, url = server
  for name in fm.IDX_FILES:
    shutil.copy(os.path.join(real_idx_dir, name), root / name)
  monkeypatch.setattr(fetch, 'UPSTREAM_URL', url)
  assert fetch.main() == 0
  assert sorted(os.listdir(no_local_copy)) == sorted(fm.IDX_FILES)
  assert fm.find_idx_dir('') == str(no_local_copy)


def test_corrupt_download_leaves_nothing(server, real_idx_dir, no_local_copy, monkeypatch, capsys):
  root, url = server
  for name in fm.IDX_FILES:
    shutil.copy(os.path.join(real_idx_dir, name), root / name)
  (root / 't10k-labels-idx1-ubyte.gz').write_bytes(b'truncated')
  monkeypatch.setattr(fetch, 'UPSTREAM_URL', url)
  assert fetch.main() == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert 't10k-labels-idx1-ubyte.gz: cannot read gzip IDX file' in err[-2]
  assert err[-1].startswith("error: could not get Fashion-MNIST: install Debian's")
  assert not no_local_copy.exists()
  assert not [p for p in os.listdir(no_local_copy.parent) if p.startswith('.fashion-mnist-')]
