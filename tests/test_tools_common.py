"""The tools' shared backbone (segae_jax.tools.common, segae_jax.data.batching): hand-computed
answers, no training."""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from PIL import Image

from segae_jax.data import batching, images, sizing
from segae_jax.errors import UserInputError
from segae_jax.tools import common


def test_chunks_pad_the_last_batch_with_example_zero():
  got = list(batching.chunks(5, 2))
  assert [i.tolist() for i, _ in got] == [[0, 1], [2, 3], [4, 0]]
  assert [v.tolist() for _, v in got] == [[1, 1], [1, 1], [1, 0]]
  assert all(i.dtype == np.int64 and v.dtype == np.float32 for i, v in got)
  assert [v.tolist() for _, v in batching.chunks(4, 2)] == [[1, 1], [1, 1]]  # No padding.
  assert list(batching.chunks(0, 2)) == []
  with pytest.raises(ValueError, match='batch_size must be >= 1'):
    list(batching.chunks(3, 0))


def test_pad_batch_appends_zero_rows_and_flags_them():
  x = np.arange(6, dtype=np.float32).reshape(3, 2) + 1
  padded, valid = batching.pad_batch(x, 5)
  np.testing.assert_array_equal(padded, [[1, 2], [3, 4], [5, 6], [0, 0], [0, 0]])
  assert padded.dtype == np.float32 and valid.tolist() == [1, 1, 1, 0, 0]
  both, valid = batching.pad_batch({'a': x, 'b': np.array([7, 8, 9])}, 4)
  assert both['b'].tolist() == [7, 8, 9, 0] and both['a'].shape == (4, 2)
  assert valid.tolist() == [1, 1, 1, 0]
  with pytest.raises(ValueError, match='cannot pad'):
    batching.pad_batch(x, 2)
  with pytest.raises(ValueError, match='cannot pad'):
    batching.pad_batch({'a': x, 'b': np.zeros(2)}, 4)


def test_map_batched_sees_one_shape_and_keeps_the_real_rows():
  seen = []

  def fn(batch):
    seen.append(batch.tolist())
    return batch * 10
  out = batching.map_batched(fn, np.array([1, 2, 3, 4, 5]), 2)
  assert out.tolist() == [10, 20, 30, 40, 50]
  assert seen == [[1, 2], [3, 4], [5, 0]]  # The last batch padded with a zero row.
  seen.clear()
  assert batching.map_batched(fn, np.array([1, 2, 3]), 100).tolist() == [10, 20, 30]
  assert seen == [[1, 2, 3]]  # Batches of min(batch_size, n): no padding to 100.


def _run(model=None, name='unet', step=7, checkpoint='best', image_shape=(2, 2, 1)):
  config = ml_collections.ConfigDict({'model': {'name': name}})
  return common.TrainedRun(config=config, model=model, variables={}, step=step,
                           checkpoint=checkpoint, image_shape=image_shape, class_names=[])


def test_result_header(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  run = _run(step=12, checkpoint='latest', name='vae')
  where = str(tmp_path / 'runs' / 'a')
  assert common.result_header('runs/a', run) == {'workdir': where, 'step': 12,
                                                 'checkpoint': 'latest', 'model': 'vae'}
  assert common.result_header('runs/a', run, model=False) == {'workdir': where, 'step': 12,
                                                              'checkpoint': 'latest'}
  assert common.result_header('runs/a', run, checkpoint=False) == {'workdir': where, 'step': 12,
                                                                   'model': 'vae'}


def test_format_table_aligned_and_markdown():
  columns = [('class', '<6'), ('IoU', '6.3f'), ('pixels', '7d')]
  rows = [('cat', 0.5, 12), ('dog', 0.25, 3456), ('none', 1.0)]
  assert common.format_table(columns, rows) == (
      'class     IoU  pixels\n'
      'cat     0.500      12\n'
      'dog     0.250    3456\n'
      'none    1.000')
  # Text in a number's column keeps the column's width and (right) alignment.
  assert common.format_table([('n', '5d')], [('all',)]) == '    n\n  all'
  assert common.format_table(['method', 'acc'], [('linear', '91.5%'), ('a|b', '-')],
                             markdown=True) == (
      '| method | acc |\n'
      '|---|---|\n'
      '| linear | 91.5% |\n'
      '| a\\|b | - |')


def test_user_images_are_read_converted_and_resized_to_the_model_input(tmp_path):
  """What predict and unsupervised --input do with a file before the model (resize mode)."""
  read = lambda name, channels: np.asarray(images.read_image(str(tmp_path / name), channels))
  rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]],
                  [[0, 0, 0], [51, 51, 51], [102, 102, 102], [255, 255, 255]]], np.uint8)
  Image.fromarray(rgb, 'RGB').save(tmp_path / 'a.png')
  Image.fromarray(np.full((6, 8), 51, np.uint8), 'L').save(tmp_path / 'b.png')
  np.testing.assert_array_equal(sizing.resize_image(read('a.png', 3), (2, 4)), rgb)  # Own size.
  # Grayscale: ITU-R 601 luma L = (299 R + 587 G + 114 B) / 1000, rounded: red 76, green 150,
  # blue 29.
  np.testing.assert_array_equal(read('a.png', 1)[0], [76, 150, 29, 255])
  # A flat 8x6 image shrunk to 4x2 (RGB from gray) stays flat.
  flat = sizing.resize_image(read('b.png', 3), (2, 4))
  assert flat.shape == (2, 4, 3) and (flat == 51).all()
  # Bilinear when enlarging, pixel centres aligned: [0, 255] to width 4 samples at x = -0.25
  # (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1): 0, 63.75 -> 64, 191.25 -> 191, 255.
  Image.fromarray(np.array([[0, 255]], np.uint8), 'L').save(tmp_path / 'ramp.png')
  ramp = sizing.resize_image(read('ramp.png', 1)[..., None], (1, 4))
  np.testing.assert_array_equal(ramp[0, :, 0], [0, 64, 191, 255])
  with pytest.raises(UserInputError, match='not a readable image'):
    (tmp_path / 'c.png').write_bytes(b'no image')
    read('c.png', 3)


def test_run_flags_are_filed_under_the_calling_module():
  values = flags.FlagValues()
  common.define_run_flags('the run', 'latest', split_help='which split', flag_values=values)
  assert values['checkpoint'].default == 'latest' and values['split'].default == 'test'
  assert values['workdir'].default is None and values['workdir'].help == 'the run'
  for name in ('workdir', 'split', 'checkpoint'):
    assert values.find_module_defining_flag(name) == __name__  # So --help lists them.
  values(['prog', '--checkpoint=best'])
  assert values.checkpoint == 'best'
  other = flags.FlagValues()
  common.define_run_flags('the run', flag_values=other)
  assert 'checkpoint' not in other and 'split' not in other


SHAPES = []


class _Threshold(nn.Module):
  """Two classes: logits (x, 1 - x), so class 0 where a pixel is above 0.5."""

  @nn.compact
  def __call__(self, x, train=True):
    SHAPES.append(x.shape)
    return {'seg_logits': jnp.concatenate([x, 1.0 - x], -1), 'mean': x.mean((1, 2, 3))}


class _Reconstruct(nn.Module):

  @nn.compact
  def __call__(self, x, train=True):
    return {'recon_logits': x}


def test_trained_run_batched_inference():
  run = _run(_Threshold())
  images = np.array([0.9, 0.1, 0.7, 0.2, 0.6], np.float32).reshape(5, 1, 1, 1)
  images = np.broadcast_to(images, (5, 2, 2, 1))
  assert run.output_names() == ['mean', 'seg_logits']
  run.require_segmentation('w')
  SHAPES.clear()
  labels = run.infer(images, common.seg_labels, 2)
  assert labels.shape == (5, 2, 2) and labels[:, 0, 0].tolist() == [0, 1, 0, 1, 0]
  assert set(SHAPES) == {(2, 2, 2, 1)}  # One compiled shape.
  probs = run.infer(images, common.seg_probabilities, 4)
  np.testing.assert_allclose(probs[1, 0, 0], [1 / (1 + np.e ** 0.8), 1 / (1 + np.e ** -0.8)],
                             rtol=1e-5)
  with pytest.raises(UserInputError, match="workdir w holds a 'vae' model, which does not "
                                           'segment'):
    _run(_Reconstruct(), name='vae').require_segmentation('w')
