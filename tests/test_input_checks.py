"""Each image given to predict, unsupervised --input and the Segmenter is checked against the run
(data.normalize.conform: accepted, converted with one warning, or refused in one line naming the
image and what the run expects), and a TIFF written plainly as [h, w, c] (axes QYX) is read as
it was written. Every file is written here (Pillow, tifffile) with hand-known pixels."""
import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from segae_jax import Segmenter
from segae_jax.data import images
from segae_jax.data.normalize import Normalization
from segae_jax.errors import UserInputError
from segae_jax.tools import common, predict
from segae_jax.tools.common import Inference

UNIT8 = Normalization()  # What an 8-bit folder run (and every run before it was recorded) holds.
PERCENTILE16 = Normalization('percentile', 'uint16', (1000.,), (50.,), (900.,), (1100.,))
RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [51, 51, 51]]], np.uint8)


def _run(channels, normalization=UNIT8):
  """A restored run as read_input sees it: its channels and its normalisation."""
  return common.TrainedRun(config=None, model=None, variables={}, step=0, checkpoint='best',
                           image_shape=(8, 8, channels), class_names=[],
                           normalization=normalization)


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _read(path, run, caplog):
  """(pixels read_input returns, the warnings it logged)."""
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='segae_jax'):
    pixels = common.read_input(str(path), run)
  return pixels, _warnings(caplog)


# ---------------------------------------------------------------------------------------------
# Files against runs: one test per row of normalize.conform's table.

def test_an_image_of_the_runs_own_kind_is_read_as_written(tmp_path, caplog):
  Image.fromarray(RGB, 'RGB').save(tmp_path / 'rgb.png')
  pixels, warned = _read(tmp_path / 'rgb.png', _run(3), caplog)
  assert pixels.dtype == np.uint8 and not warned
  np.testing.assert_array_equal(pixels, RGB)
  deep = np.array([[0, 300], [65535, 4095]], np.uint16)
  Image.fromarray(deep).save(tmp_path / 'deep.png')  # Pillow's 16-bit PNG: mode I;16.
  pixels, warned = _read(tmp_path / 'deep.png', _run(1, PERCENTILE16), caplog)
  assert pixels.dtype == np.uint16 and not warned
  np.testing.assert_array_equal(pixels[..., 0], deep)
  planes = np.arange(4 * 3 * 2, dtype=np.float32).reshape(3, 2, 4) / 7
  tifffile.imwrite(tmp_path / 'float.tif', planes, photometric='minisblack',
                   planarconfig='contig')
  pixels, warned = _read(tmp_path / 'float.tif', _run(4, Normalization('unit', 'float32')), caplog)
  assert pixels.dtype == np.float32 and not warned
  np.testing.assert_array_equal(pixels, planes)


def test_a_16_bit_png_into_an_8_bit_run_is_refused_not_clipped(tmp_path):
  # The reproduction: convert('L') clipped every value above 255 to 255, exit 0.
  Image.fromarray(np.array([[0, 1000], [40000, 65535]], np.uint16)).save(tmp_path / 'x.png')
  for channels in (1, 3):
    with pytest.raises(UserInputError, match=(
        r'^\S+x.png: 16-bit image \(uint16\), but the run trained on 8-bit images \(uint8, '
        r'normalize=unit\); convert it to 8 bits or train on 16-bit images$')):
      common.read_input(str(tmp_path / 'x.png'), _run(channels))


def test_a_float_tiff_into_an_integer_run_is_refused_as_float_not_unreadable(tmp_path):
  tifffile.imwrite(tmp_path / 'f.tif', np.full((4, 5), 0.25, np.float32))
  with pytest.raises(UserInputError, match=r'f.tif: float image \(float32\), but the run trained '
                                           r'on 8-bit images \(uint8, normalize=unit\); convert '
                                           r'it to 8 bits or train on float images'):
    common.read_input(str(tmp_path / 'f.tif'), _run(1))
  with pytest.raises(UserInputError, match=r'f.tif: float image \(float32\), but the run trained '
                                           r'on 16-bit images \(uint16, normalize=percentile\)'):
    common.read_input(str(tmp_path / 'f.tif'), _run(1, PERCENTILE16))
  tifffile.imwrite(tmp_path / 'u16.tif', np.full((4, 5), 7, np.uint16))
  with pytest.raises(UserInputError, match=r'u16.tif: 16-bit image \(uint16\), but the run '
                                           r'trained on float images \(float32, normalize=unit\)'):
    common.read_input(str(tmp_path / 'u16.tif'), _run(1, Normalization('unit', 'float32')))


def test_8_bit_grayscale_into_an_rgb_run_is_replicated_with_one_warning(tmp_path, caplog):
  gray = np.array([[0, 51], [200, 255]], np.uint8)
  Image.fromarray(gray, 'L').save(tmp_path / 'g.png')
  pixels, warned = _read(tmp_path / 'g.png', _run(3), caplog)
  np.testing.assert_array_equal(pixels, np.stack([gray] * 3, -1))
  assert warned == [f'{tmp_path / "g.png"}: replicated its one grayscale channel to 3 (RGB); the '
                    'run trained on 3-channel 8-bit images (uint8, normalize=unit)']


def test_8_bit_colour_into_a_grayscale_run_is_luma_with_one_warning(tmp_path, caplog):
  Image.fromarray(RGB, 'RGB').save(tmp_path / 'c.png')
  pixels, warned = _read(tmp_path / 'c.png', _run(1), caplog)
  # ITU-R 601-2 luma (299 R + 587 G + 114 B) / 1000, rounded: red 76, green 150, blue 29; a
  # gray 51 stays 51.
  np.testing.assert_array_equal(pixels[..., 0], [[76, 150], [29, 51]])
  assert len(warned) == 1 and 'converted its colour to grayscale (ITU-R 601-2 luma' in warned[0]


def test_an_opaque_alpha_channel_is_dropped_a_transparent_one_refused(tmp_path, caplog):
  rgba = np.concatenate([RGB, np.full((2, 2, 1), 255, np.uint8)], -1)
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'opaque.png')
  pixels, warned = _read(tmp_path / 'opaque.png', _run(3), caplog)
  np.testing.assert_array_equal(pixels, RGB)
  assert len(warned) == 1 and 'dropped its opaque alpha channel;' in warned[0]
  # Gray with alpha into RGB: both conversions, still one warning.
  Image.fromarray(rgba[..., 2:], 'LA').save(tmp_path / 'la.png')
  pixels, warned = _read(tmp_path / 'la.png', _run(3), caplog)
  np.testing.assert_array_equal(pixels, np.repeat(RGB[..., 2:], 3, -1))
  assert len(warned) == 1 and ('dropped its opaque alpha channel, replicated its one grayscale '
                               'channel to 3 (RGB);') in warned[0]
  rgba[1, 1, 3] = 254
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'clear.png')
  with pytest.raises(UserInputError, match=r'clear.png: image has transparent pixels \(alpha '
                                           r'channel\); expected an opaque image'):
    common.read_input(str(tmp_path / 'clear.png'), _run(3))


def test_8_bit_into_a_16_bit_run_scales_for_unit_and_is_refused_for_statistics(tmp_path, caplog):
  Image.fromarray(np.array([[0, 1], [128, 255]], np.uint8), 'L').save(tmp_path / 'e.png')
  pixels, warned = _read(tmp_path / 'e.png', _run(1, Normalization('unit', 'uint16')), caplog)
  # x257: v / 255 == 257 v / 65535, the same model input.
  assert pixels.dtype == np.uint16
  np.testing.assert_array_equal(pixels[..., 0], [[0, 257], [32896, 65535]])
  assert len(warned) == 1 and 'scaled its 8-bit values to 16 bits (x257)' in warned[0]
  with pytest.raises(UserInputError, match=r'e.png: 8-bit image \(uint8\), but the run trained '
                                           r'on 16-bit images \(uint16, normalize=percentile\), '
                                           r'whose percentile statistics'):
    common.read_input(str(tmp_path / 'e.png'), _run(1, PERCENTILE16))
  # Channel conversions are for 8-bit runs only: a 16-bit run's 3 channels need not be RGB.
  with pytest.raises(UserInputError, match=r'e.png: image has 1 channel\(s\) \(uint16\), but the '
                                           r'run trained on 3-channel 16-bit images'):
    common.read_input(str(tmp_path / 'e.png'), _run(3, Normalization('unit', 'uint16')))


def test_another_channel_count_is_refused_naming_the_run(tmp_path):
  two = np.arange(4 * 5 * 2, dtype=np.uint8).reshape(4, 5, 2)
  tifffile.imwrite(tmp_path / 'two.tif', two, photometric='minisblack', planarconfig='contig')
  np.testing.assert_array_equal(common.read_input(str(tmp_path / 'two.tif'), _run(2)), two)
  # Its extra sample is a channel (UNSPECIFIED), not alpha: no longer dropped by Pillow's 'L'.
  with pytest.raises(UserInputError, match=r'two.tif: image has 2 channel\(s\) \(uint8\) but '
                                           r'config.data.channels is 1'):
    images.read_pixels(str(tmp_path / 'two.tif'), 1)
  with pytest.raises(UserInputError, match=r'^\S+two.tif: image has 2 channel\(s\) \(uint8\), but '
                                           r'the run trained on 3-channel 8-bit images \(uint8, '
                                           r'normalize=unit\)$'):
    common.read_input(str(tmp_path / 'two.tif'), _run(3))


# ---------------------------------------------------------------------------------------------
# The Segmenter from numpy arrays.

def _segmenter(channels, normalization):
  """A Segmenter at 2x2 whose logits function records the pixels it was given: class 1 where the
  first channel is above half its range."""
  seen = []
  def logits(pixels):
    seen.append(pixels)
    first = pixels[..., :1] / np.float32(255 if normalization.dtype == 'uint8' else 65535)
    return np.concatenate([0.5 - first, first - 0.5], -1)
  segment = Segmenter(logits, (2, 2, channels), inference=Inference(mode='resize'),
                      batch_size=2, normalization=normalization)
  return segment, seen


def test_segmenter_takes_float_values_in_the_runs_units_and_refuses_other_depths(caplog):
  segment, seen = _segmenter(3, UNIT8)
  labels = segment.predict(RGB.astype(np.float32))  # The export's documented input: 0..255.
  np.testing.assert_array_equal(labels, [[1, 0], [0, 0]])
  np.testing.assert_array_equal(seen[-1][0], RGB)
  with caplog.at_level(logging.WARNING, logger='segae_jax'):
    segment.predict(RGB / np.float32(255))  # Probably fractions: taken as they are, warned.
  assert _warnings(caplog) == ['image 0: took its values, all in [0, 1], as 8-bit units 0..255 '
                               '(multiply by 255 if they are fractions of full scale); the run '
                               'trained on 3-channel 8-bit images (uint8, normalize=unit)']
  with pytest.raises(UserInputError, match=r"image 1: values in \[0, 300\], outside the run's "
                                           r'8-bit units 0..255'):
    segment([RGB, np.array([[0, 300], [5, 6]], np.int64)[..., None].repeat(3, -1)])
  with pytest.raises(UserInputError, match=r'image 0: 16-bit image \(uint16\), but the run '
                                           r'trained on 8-bit images'):
    segment.predict(RGB.astype(np.uint16))
  with pytest.raises(UserInputError, match=r'image 0: NaN or infinite pixel values'):
    segment.predict(np.full((2, 2, 3), np.nan, np.float32))
  with pytest.raises(UserInputError, match=r'image 0: pixels of type bool, but the run trained on '
                                           r'8-bit images \(uint8, normalize=unit\); expected '
                                           r'uint8 pixels, or float values in their units'):
    segment.predict(np.ones((2, 2, 3), bool))  # A mask, not an image.
  with pytest.raises(UserInputError, match=r'image 0: array of shape \(2, 2, 3, 1\); expected'):
    segment.predict(np.zeros((2, 2, 3, 1), np.uint8))


def test_segmenter_converts_as_files_convert(caplog):
  segment, seen = _segmenter(3, UNIT8)
  with caplog.at_level(logging.WARNING, logger='segae_jax'):
    labels = segment.predict(np.array([[255, 0], [0, 0]], np.uint8))  # Gray [h, w].
    segment.predict(np.concatenate([RGB, np.full((2, 2, 1), 255, np.uint8)], -1))  # RGBA.
  np.testing.assert_array_equal(labels, [[1, 0], [0, 0]])
  np.testing.assert_array_equal(seen[0][0], np.repeat([[[255], [0]], [[0], [0]]], 3, -1))
  np.testing.assert_array_equal(seen[1][0], RGB)
  assert [w.split(';')[0] for w in _warnings(caplog)] == [
      'image 0: replicated its one grayscale channel to 3 (RGB)',
      'image 0: dropped its opaque alpha channel']
  deep, seen = _segmenter(1, Normalization('unit', 'uint16'))
  deep.predict(np.array([[200, 1], [0, 255]], np.uint8))
  np.testing.assert_array_equal(seen[0][0, ..., 0], [[51400, 257], [0, 65535]])


def test_segmenter_without_a_normalisation_checks_the_channels_only():
  segment = Segmenter(lambda x: np.zeros(x.shape[:3] + (2,), np.float32), (2, 2, 1),
                      inference=Inference(mode='resize'))
  assert segment.predict(np.full((2, 2), 7, np.uint16)).shape == (2, 2)
  with pytest.raises(UserInputError, match=r"image 0 of shape \(2, 2, 3\): expected \[height, "
                                           r"width, 1\] \(the model's channels\)"):
    segment.predict(np.zeros((2, 2, 3), np.uint8))


def test_a_runs_segmenter_and_predict_check_against_its_normalisation(unet_scenes_run, tmp_path):
  workdir, _ = unet_scenes_run
  segment = Segmenter.from_workdir(workdir)
  assert segment.normalization.dtype == 'uint8'  # The run's, handed to its Segmenter.
  with pytest.raises(UserInputError, match=r'image 0: 16-bit image \(uint16\), but the run '
                                           r'trained on 8-bit images'):
    segment.predict(np.zeros((8, 8, 3), np.uint16))
  (tmp_path / 'in').mkdir()
  Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / 'in' / 'deep.png')
  with pytest.raises(UserInputError, match=r'deep.png: 16-bit image \(uint16\), but the run '
                                           r'trained on 8-bit images \(uint8, normalize=unit\)'):
    predict.predict(workdir, str(tmp_path / 'in'), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


# ---------------------------------------------------------------------------------------------
# TIFFs whose axes tifffile does not know (QYX).

@pytest.mark.parametrize('channels,dtype', [(2, np.uint16), (5, np.uint16), (2, np.float32)])
def test_a_plainly_written_h_w_c_tiff_is_read_channels_last(tmp_path, caplog, channels, dtype):
  written = np.arange(6 * 7 * channels).reshape(6, 7, channels).astype(dtype)
  tifffile.imwrite(tmp_path / 'x.tif', written)  # The plain way: axes QYX, shape kept aside.
  with tifffile.TiffFile(tmp_path / 'x.tif') as tif:
    assert tif.series[0].axes == 'QYX'  # What makes the file ambiguous.
  with caplog.at_level(logging.WARNING, logger='segae_jax'):
    read = images.read_pixels(str(tmp_path / 'x.tif'), channels)
  assert read.dtype == dtype
  np.testing.assert_array_equal(read, written)
  assert _warnings(caplog) == [f'{tmp_path / "x.tif"}: axes QYX unknown; read shape '
                               f'6x7x{channels} as height x width x {channels} channels']


def test_four_channels_and_pages_first_keep_their_reading(tmp_path, caplog):
  rgba_like = np.arange(6 * 7 * 4, dtype=np.uint16).reshape(6, 7, 4)
  tifffile.imwrite(tmp_path / 'four.tif', rgba_like)  # tifffile: samples (YXS), not QYX.
  pages = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
  tifffile.imwrite(tmp_path / 'pages.tif', pages)  # QYX, one page per channel.
  with caplog.at_level(logging.WARNING, logger='segae_jax'):
    np.testing.assert_array_equal(images.read_pixels(str(tmp_path / 'four.tif'), 4), rgba_like)
    np.testing.assert_array_equal(images.read_pixels(str(tmp_path / 'pages.tif'), 5),
                                  np.moveaxis(pages, 0, -1))
  assert not _warnings(caplog)


def test_a_genuinely_ambiguous_tiff_is_refused_in_one_line(tmp_path):
  tifffile.imwrite(tmp_path / 'both.tif', np.zeros((2, 6, 2), np.uint16))
  with pytest.raises(UserInputError, match=(
      r"^\S+both.tif: image of shape 2x6x2 with unknown axes \(QYX\): both its first axis "
      r"\(pages\) and its last are the 2 channel\(s\) expected; write it with explicit axes, "
      r"e.g. tifffile.imwrite\(path, image, photometric='minisblack', planarconfig='contig'\) "
      r"for \[height, width, channels\]$")):
    images.read_pixels(str(tmp_path / 'both.tif'), 2)
  tifffile.imwrite(tmp_path / 'neither.tif', np.zeros((6, 7, 2), np.uint16))
  with pytest.raises(UserInputError, match=r'neither.tif: image of shape 6x7x2 with unknown axes '
                                           r'\(QYX\): neither its first axis \(pages\) nor its '
                                           r'last is the 3 channel\(s\) expected'):
    images.read_pixels(str(tmp_path / 'neither.tif'), 3)


def test_predict_reads_a_plain_2_channel_tiff_with_one_warning(tmp_path, caplog):
  written = np.arange(6 * 7 * 2, dtype=np.uint16).reshape(6, 7, 2)
  tifffile.imwrite(tmp_path / 'x.tif', written)
  pixels, warned = _read(tmp_path / 'x.tif', _run(2, Normalization('unit', 'uint16')), caplog)
  np.testing.assert_array_equal(pixels, written)
  assert len(warned) == 1 and 'axes QYX unknown' in warned[0]


def test_input_files_sharing_a_stem_are_refused(tmp_path):
  """predict names its outputs by stem: a.png and a.tif would both write a_labels.png, and one
  result would silently replace the other."""
  from segae_jax.data.images import list_images
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'a.png')
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'b.png')
  assert list_images(str(tmp_path)) == [str(tmp_path / 'a.png'), str(tmp_path / 'b.png')]
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'a.tif')
  with pytest.raises(UserInputError, match=r'a.tif: same file stem as .*a.png'):
    list_images(str(tmp_path))
