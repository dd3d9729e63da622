"""Detection from masks: connected components, COCO AP on hand-built boxes, the CLI end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from segae_jax.tools import detect


def _probs(label_map, num_classes, confidence=1.0):
  """Probabilities with `confidence` on each pixel's class and the rest spread evenly."""
  label_map = np.asarray(label_map)
  rest = (1.0 - confidence) / (num_classes - 1)
  probs = np.full(label_map.shape + (num_classes,), rest, np.float32)
  np.put_along_axis(probs, label_map[..., None], confidence, axis=-1)
  return probs


def test_components_boxes_scores_and_connectivity():
  labels = np.zeros((8, 8), np.int64)
  labels[1:3, 1:4] = 1             # One class-1 block: box x 1..4, y 1..3.
  labels[5, 5] = labels[6, 6] = 2  # Diagonal neighbours: one 8-connected class-2 component.
  labels[0, 7] = 2                 # A separate single class-2 pixel.
  probs = _probs(labels, 3, confidence=0.8)
  probs[1, 1] = [0.1, 0.5, 0.4]    # Still class 1, lowering that component's mean score.
  found = detect.components_to_detections(probs)
  np.testing.assert_array_equal(found['labels'], [1, 2, 2])
  # Class 2 components in raster order: the pixel at (0, 7) first, then the diagonal pair.
  np.testing.assert_array_equal(found['boxes'], [[1, 1, 4, 3], [7, 0, 8, 1], [5, 5, 7, 7]])
  np.testing.assert_allclose(found['scores'], [(5 * 0.8 + 0.5) / 6, 0.8, 0.8], rtol=1e-6)
  # min_area drops the single pixel; background never yields a detection.
  found = detect.components_to_detections(probs, min_area=2)
  np.testing.assert_array_equal(found['labels'], [1, 2])
  assert detect.components_to_detections(_probs(np.zeros((4, 4), int), 3))['boxes'].shape == (0, 4)


def test_merge_radius_joins_pieces_across_small_gaps_only():
  labels = np.zeros((6, 12), np.int64)
  labels[1:3, 0:2] = 1   # Two class-1 pieces with a 2-column gap (columns 2 and 3) ...
  labels[1:3, 4:6] = 1
  labels[1:3, 11] = 1    # ... and a third 5 columns further on.
  probs = _probs(labels, 2)
  boxes = lambda r: detect.components_to_detections(probs, merge_radius=r)['boxes'].tolist()
  assert boxes(0) == [[0, 1, 2, 3], [4, 1, 6, 3], [11, 1, 12, 3]]
  assert boxes(1) == [[0, 1, 6, 3], [11, 1, 12, 3]]   # Gaps of up to 2 * 1 pixels close.
  assert boxes(3) == [[0, 1, 12, 3]]                  # The 5-pixel gap closes at radius 3.


def test_scene_boxes_convert_normalised_yxyx_to_pixel_xyxy():
  objects = {'bbox': np.array([[0.25, 0.5, 0.75, 1.0]], np.float32), 'label': np.array([3])}
  boxes = detect.scene_boxes(objects, 64)
  np.testing.assert_array_equal(boxes['boxes'], [[32, 16, 64, 48]])
  np.testing.assert_array_equal(boxes['labels'], [4])  # Garment class 3 is segmentation class 4.


def _gt(*boxes_labels):
  return {'boxes': np.array([b for b, _ in boxes_labels], np.float32).reshape(-1, 4),
          'labels': np.array([c for _, c in boxes_labels], np.int64)}


def _dets(*boxes_labels_scores):
  return {'boxes': np.array([b for b, _, _ in boxes_labels_scores], np.float32).reshape(-1, 4),
          'labels': np.array([c for _, c, _ in boxes_labels_scores], np.int64),
          'scores': np.array([s for _, _, s in boxes_labels_scores], np.float32)}


def test_average_precision_on_boxes_with_known_answers():
  gt = [_gt(((0, 0, 10, 10), 1)), _gt(((20, 20, 30, 40), 2))]
  perfect = [_dets(((0, 0, 10, 10), 1, 0.9)), _dets(((20, 20, 30, 40), 2, 0.7))]
  scores = detect.average_precision(gt, perfect, [1, 2])
  assert scores['ap'] == pytest.approx(1.0) and scores['ap50'] == pytest.approx(1.0)
  assert scores['per_class_ap50'] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}

  # IoU 64/100 = 0.64: a hit at thresholds 0.50, 0.55, 0.60, a miss at the 7 above -> AP 3/10.
  one = [_gt(((0, 0, 10, 10), 1))]
  scores = detect.average_precision(one, [_dets(((0, 0, 8, 8), 1, 0.9))], [1])
  assert scores['ap50'] == pytest.approx(1.0)
  assert scores['ap75'] == pytest.approx(0.0)
  assert scores['ap'] == pytest.approx(0.3)

  # A false positive ranked above the true one: precision 1/2 at recall 1 -> AP50 = 0.5.
  scores = detect.average_precision(
      one, [_dets(((40, 40, 50, 50), 1, 0.9), ((0, 0, 10, 10), 1, 0.8))], [1])
  assert scores['ap50'] == pytest.approx(0.5)

  # The right box with the wrong class is no hit; a class without ground truth has no AP.
  scores = detect.average_precision(one, [_dets(((0, 0, 10, 10), 2, 0.9))], [1, 2])
  assert scores['ap50'] == pytest.approx(0.0)
  assert scores['per_class_ap50'][2] is None
  assert detect.average_precision(one, [_dets()], [1])['ap'] == 0.0


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'segae_jax.tools.detect', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_detect_cli_on_real_scenes(unet_scenes_run, tmp_path):
  unet_workdir, _ = unet_scenes_run
  out = str(tmp_path / 'out')
  proc = _run(f'--workdir={unet_workdir}', f'--output={out}', '--num_pictures=4')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'AP50' in proc.stdout
  result = json.load(open(os.path.join(out, 'detections.json')))
  assert result['num_images'] == 32 and result['num_ground_truth'] >= 32
  assert result['num_detections'] == len(result['detections'])
  for key in ('ap', 'ap50', 'ap75'):
    assert 0.0 <= result[key] <= 1.0
  assert result['ap50'] >= result['ap'] and result['ap50'] >= result['ap75']
  # The ground-truth masks recover most boxes (0.72 measured here): merged or split items miss.
  assert result['oracle']['ap50'] > 0.6 and result['merge_radius'] == 3
  for d in result['detections']:
    assert 1 <= d['category_id'] <= 10 and 0 < d['score'] <= 1 and 0 <= d['image_id'] < 32
    x, y, w, h = d['bbox']
    assert w > 0 and h > 0 and x + w <= 32 and y + h <= 32
  picture = np.asarray(Image.open(os.path.join(out, 'detections.png')))
  # One row of four 32x32 scenes drawn 4x larger, 2 px padding.
  assert picture.shape == (130 + 2, 4 * 130 + 2, 3)


@pytest.mark.faults  # Longer end-to-end check: make test-faults.
def test_detect_refuses_bad_input(unet_scenes_run, tmp_path):
  unet_workdir, _ = unet_scenes_run
  proc = _run(f'--workdir={unet_workdir}', '--min_area=0')
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      'error: --min_area must be >= 1, got 0']
  proc = _run(f'--workdir={tmp_path}')
  assert proc.returncode == 2 and 'not a training workdir' in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
