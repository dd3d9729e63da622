"""Test-time augmentation and post-processing of label maps (segae_jax.inference.postprocess), by
hand, and through a trained U-Net's Segmenter and evaluate."""
import numpy as np
import pytest

from segae_jax.errors import UserInputError
from segae_jax.inference import postprocess
from segae_jax.tools import common, evaluate


def test_small_components_of_each_foreground_class_become_background():
  labels = np.array([[1, 1, 0, 0, 2],
                     [1, 0, 0, 0, 0],
                     [0, 0, 2, 2, 0],
                     [0, 0, 2, 2, 0]], np.uint8)
  # Class 2's lone pixel at (0, 4) is a component of 1 pixel; class 1's corner one of 3 (the
  # diagonal does not connect: 4 neighbours).
  expected = labels.copy()
  expected[0, 4] = 0
  np.testing.assert_array_equal(postprocess.remove_small_components(labels, 2), expected)
  expected[:2, :2] = 0   # 3 pixels < 4.
  np.testing.assert_array_equal(postprocess.remove_small_components(labels, 4), expected)
  np.testing.assert_array_equal(postprocess.remove_small_components(labels, 0), labels)
  background = np.zeros((3, 3), np.uint8)  # Background components are never removed.
  np.testing.assert_array_equal(postprocess.remove_small_components(background, 100), background)


def test_holes_a_class_encloses_are_filled_with_it():
  labels = np.array([[0, 0, 0, 0, 0, 0],
                     [0, 1, 1, 1, 0, 2],
                     [0, 1, 0, 1, 0, 2],
                     [0, 1, 2, 1, 0, 0],
                     [0, 1, 1, 1, 0, 0]], np.uint8)
  expected = labels.copy()
  expected[2, 2] = expected[3, 2] = 1  # Enclosed by class 1, whatever they held.
  np.testing.assert_array_equal(postprocess.fill_holes(labels), expected)
  open_ring = labels.copy()
  open_ring[4, 2] = 0  # Through the bottom row the region reaches the border: no hole.
  np.testing.assert_array_equal(postprocess.fill_holes(open_ring)[2, 2], 0)
  # Removal first, then filling: the lone class-2 pixel inside the ring is removed, then filled.
  np.testing.assert_array_equal(postprocess.postprocess(labels, 2, holes=True), expected)


def test_flips_average_the_mirrored_outputs_by_hand():
  """A function that is not mirror-symmetric (each pixel's output is its row index times 10 plus
  its column index, plus its value): averaged over the 4 mirror passes, the position terms become
  the mean of i and h-1-i (and of j and w-1-j), the value term stays."""
  x = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)
  position = lambda images: (images + 10 * np.arange(3)[None, :, None, None]
                             + np.arange(4)[None, None, :, None])
  averaged = postprocess.with_flips(position)(x)
  np.testing.assert_allclose(averaged, x + 10 * 1.0 + 1.5)
  # hflip mirrors left-right only: the row term stays, the column term becomes its mean.
  hflip = postprocess.with_flips(position, postprocess.PASSES['hflip'])(x)
  np.testing.assert_allclose(hflip, x + 10 * np.arange(3)[None, :, None, None] + 1.5)


def test_bad_options_are_one_line():
  with pytest.raises(UserInputError, match=r'--min_component_size=-1: expected a number'):
    common.Inference(min_component_size=-1)
  with pytest.raises(UserInputError,
                     match=r"--tta='rotations'; expected one of none, hflip, flips"):
    common.Inference(tta='rotations')


def test_segmenter_with_flips_is_the_argmax_of_the_averaged_logits(unet_scenes_run):
  workdir, _ = unet_scenes_run
  run = common.load_run(workdir)
  height, width, channels = run.image_shape
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (height, width, channels), dtype=np.uint8) for _ in range(3)]
  labels = run.segmenter(common.Inference(mode="resize", tta="flips"), 4)(images)
  x = np.stack(images) / np.float32(255)
  logits = lambda v: np.asarray(run.model.apply(run.variables, v)['seg_logits'], np.float32)
  averaged = (logits(x) + logits(x[:, :, ::-1])[:, :, ::-1] + logits(x[:, ::-1])[:, ::-1]
              + logits(x[:, ::-1, ::-1])[:, ::-1, ::-1]) / 4
  np.testing.assert_array_equal(np.stack(labels), averaged.argmax(-1))
  hflip = run.segmenter(common.Inference(mode="resize", tta="hflip"), 4)(images)
  np.testing.assert_array_equal(
      np.stack(hflip), ((logits(x) + logits(x[:, :, ::-1])[:, :, ::-1]) / 2).argmax(-1))
  plain = run.segmenter(common.Inference(mode="resize"), 4)(images)
  np.testing.assert_array_equal(np.stack(plain), logits(x).argmax(-1))


def test_evaluate_reports_scores_with_and_without_refinement(unet_scenes_run):
  workdir, _ = unet_scenes_run
  inference = common.Inference(tta='flips', min_component_size=3, fill_holes=True)
  results = evaluate.evaluate_run(workdir, inference=inference, batch_size=8)
  assert results['tta'] == 'flips' and results['min_component_size'] == 3
  plain = evaluate.evaluate_run(workdir, batch_size=8)['metrics']
  # Without refinement, through predict's path: training's own evaluation, to float rounding.
  assert results['metrics_plain']['miou'] == pytest.approx(plain['miou'], abs=1e-6)
  assert results['metrics']['miou'] != results['metrics_plain']['miou']
  assert results['seconds'] > 0 and results['seconds_plain'] > 0
