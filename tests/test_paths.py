"""Workdirs at URLs (segae_jax.training.paths): the run's own files written through epath.

Nothing here reaches a real bucket: fsspec's in-memory file system stands in for gs:// (an
object store without append or rename, as Cloud Storage), so epath, fsspec and our writers run
for real. Orbax's checkpoint arrays (tensorstore's own gs:// driver) and tensorboardX's gs://
event writer are not exercised by these tests.
"""
import json

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from segae_jax.errors import UserInputError
from segae_jax.tools import common
from segae_jax.training import checkpoints, loop, paths, writers


class BucketInMemory(MemoryFileSystem):
  """An in-memory store of its own (not MemoryFileSystem's, which other code may use)."""
  store = {}
  pseudo_dirs = ['']
  protocol = ('gs', 'gcs')

  @classmethod
  def _strip_protocol(cls, path):  # gs://bucket/key -> /bucket/key, as memory:// paths are kept.
    return super()._strip_protocol(str(path).split('://', 1)[-1])


@pytest.fixture
def memory_gs():
  """gs:// served from memory (fsspec's registry has no public unregister, so it stays so for
  the rest of this test process; no other test reaches gs://); a fresh bucket URL."""
  for protocol in ('gs', 'gcs'):  # epath asks fsspec for 'gcs'.
    fsspec.register_implementation(protocol, BucketInMemory, clobber=True)
  fs = BucketInMemory()
  yield 'gs://bucket/run', fs
  if fs.exists('/bucket'):
    fs.rm('/bucket', recursive=True)


def test_resolve_keeps_urls_and_makes_local_paths_absolute(memory_gs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve('runs/a') == str(tmp_path / 'runs' / 'a')
  assert paths.resolve('gs://bucket/run/') == 'gs://bucket/run'  # Not <cwd>/gs:/bucket/run.
  assert paths.join('gs://bucket/run', 'checkpoints') == 'gs://bucket/run/checkpoints'


def test_a_url_no_installed_filesystem_serves_is_one_line():
  with pytest.raises(UserInputError, match=r'workdir foo://bucket/run: no installed filesystem '
                                           r'serves foo://') as e:
    paths.resolve('foo://bucket/run')
  assert '\n' not in str(e.value)


def test_run_files_are_written_and_read_back_at_a_url(memory_gs):
  workdir, fs = memory_gs
  loop.check_workdir_writable(workdir)
  assert fs.find('/bucket') == []  # The probe file was removed.
  jsonl = writers.JsonLines(paths.join(workdir, 'metrics.jsonl'))
  jsonl.write({'step': 1, 'loss': 2.0})
  jsonl.write({'step': 2, 'loss': 1.5})
  jsonl.close()
  resumed = writers.JsonLines(paths.join(workdir, 'metrics.jsonl'))  # A resumed run continues.
  resumed.write({'step': 3, 'loss': 1.0})
  lines = fs.cat('/bucket/run/metrics.jsonl').decode().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [1, 2, 3]

  writers.write_json(paths.join(workdir, 'config.json'), {'model': {'name': 'unet'}})
  assert common.load_config(workdir).model.name == 'unet'
  picture = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
  writers.save_png(paths.join(workdir, 'segmentation.png'), picture)
  with fs.open('/bucket/run/segmentation.png', 'rb') as f:
    np.testing.assert_array_equal(np.asarray(Image.open(f)), picture)
  assert sorted(p.rsplit('/', 1)[1] for p in fs.ls('/bucket/run', detail=False)) == [
      'config.json', 'metrics.jsonl', 'segmentation.png']  # No temporary file left.

  for step in ('10', '20', 'tmp_30'):
    fs.pipe(f'/bucket/run/checkpoints/{step}/meta', b'{}')
  assert checkpoints.steps_in(paths.join(workdir, 'checkpoints')) == [10, 20]


def test_a_tool_output_file_at_a_url_is_written_whole(memory_gs):
  """compress --output=gs://...: the object through a temporary one and a rename, none left."""
  from segae_jax.tools import outputs
  url, fs = memory_gs
  outputs.write_json(f'{url}/compress.json', {'bits': 8}, 'compress')
  assert json.loads(fs.cat('/bucket/run/compress.json')) == {
      'bits': 8, 'segae_output': {'tool': 'compress', 'format': 1}}
  assert fs.ls('/bucket/run', detail=False) == ['/bucket/run/compress.json']
