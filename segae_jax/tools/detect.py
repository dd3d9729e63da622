"""Object detection from a segmentation model's masks:
  python -m segae_jax.tools.detect --workdir=DIR [--split=test] [--min_area=4]

Boxes and classes come from the predicted semantic map: each connected component (8-connected) of
each non-background class of the arg-max map is one detection, its box the component's tight box
and its score the mean softmax probability of that class over the component's pixels. Pieces of
one class separated by gaps of at most 2 * --merge_radius pixels count as one component: the
derived masks of sandals, bags and many garments have gaps (on the ground-truth masks of 500 test
scenes, AP@0.5 is 0.37 with plain components, 0.70 / 0.75 / 0.78 with radius 1 / 2 / 3). Boxes are
scored against the boxes stored with `fashion_mnist_scenes` by COCO-style average precision, the
COCO evaluation computed by pycocotools' COCOeval (Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014; 101-point interpolated precision, up to 100 detections per image): AP at IoU
0.5, at 0.75, and averaged over IoU 0.5:0.05:0.95.

What this measures and its limits: semantic masks do not separate touching items of one class
(they merge into one box) and an item cut in two by an occluder gives two boxes. The same
procedure run on the ground-truth masks ("oracle", score 1) shows how much of the AP gap is due
to that rather than to the model; both are in detections.json.

Writes into --output (default WORKDIR/detect): detections.json (summary, per-class AP@0.5 and every
detection in COCO result format: image_id = index in the split, bbox [x, y, width, height] in
pixels) and detections.png (ground-truth boxes white, predicted boxes in the class colour). The
folder is written beside its place and renamed into it (tools.outputs), with a marker
(.segae_output.json) naming this tool: an existing one is replaced only when it is a previous
detect output (or empty; at the default place, one holding detections.json from before markers);
anything else is refused before the model is restored.
"""
import contextlib
import io
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from absl import flags
from PIL import Image, ImageDraw
from scipy import ndimage

from segae_jax import cli
from segae_jax.data import batching
from segae_jax.errors import UserInputError
from segae_jax.tools import common, outputs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir of a segmentation model on scenes.', 'best',
                          split_help='Split to detect on.')
  flags.DEFINE_integer('min_area', 4, 'Components of fewer pixels are dropped.')
  flags.DEFINE_integer('merge_radius', 3,
                       'Same-class pieces with gaps of at most 2x this many pixels merge.')
  flags.DEFINE_integer('num_pictures', 16, 'Images drawn into detections.png.')
  flags.DEFINE_string('output', None, 'Output folder (default WORKDIR/detect): a new or empty '
                      'folder, or a previous detect output, which is replaced.')

# 8-connectivity: diagonal neighbours belong to the same component.
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def components_to_detections(probs: np.ndarray, min_area: int = 1, merge_radius: int = 0,
                             background: int = 0) -> Dict[str, np.ndarray]:
  """Detections from one image's class probabilities.

  Each 8-connected component of each class's pixels in the arg-max map is one detection; with
  merge_radius r > 0, pieces of one class separated by gaps of up to 2r pixels (Chebyshev) count
  as one component (labeled on the mask dilated by a (2r+1)^2 square, then cut back to the
  class's own pixels): the derived masks of many garments have gaps.

  Args:
    probs: float [height, width, classes] softmax probabilities (one-hot for ground truth).
    min_area: components with fewer pixels (of the class) are dropped.
    merge_radius: r above, in pixels; 0 = plain connected components.
    background: the class that yields no detections.

  Returns:
    'boxes' float32 [n, 4] (x0, y0, x1, y1) in pixels, x1/y1 exclusive (one past the last
    column/row); 'labels' int64 [n] class ids; 'scores' float32 [n] the mean probability of the
    class over the component's pixels. Ordered by class, then by component label (raster order).
  """
  probs = np.asarray(probs, np.float32)
  label_map = probs.argmax(-1)
  boxes, labels, scores = [], [], []
  for c in range(probs.shape[-1]):
    mask = label_map == c
    if c == background or not mask.any():
      continue
    grown = mask
    if merge_radius > 0:
      grown = ndimage.binary_dilation(mask, np.ones((2 * merge_radius + 1,) * 2, bool))
    components, n = ndimage.label(grown, structure=_EIGHT_CONNECTED)
    components = np.where(mask, components, 0)
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(mask, components, index)
    means = ndimage.mean(probs[..., c], components, index)
    for k, window in enumerate(ndimage.find_objects(components, n)):
      if window is None or areas[k] < min_area:
        continue
      rows, cols = window
      boxes.append((cols.start, rows.start, cols.stop, rows.stop))
      labels.append(c)
      scores.append(means[k])
  return {'boxes': np.asarray(boxes, np.float32).reshape(-1, 4),
          'labels': np.asarray(labels, np.int64), 'scores': np.asarray(scores, np.float32)}


def scene_boxes(objects: Mapping[str, np.ndarray], canvas_size: int) -> Dict[str, np.ndarray]:
  """fashion_mnist_scenes' stored objects -> 'boxes' float32 [n, 4] (x0, y0, x1, y1) pixels and
  'labels' int64 [n] as segmentation class ids (garment class + 1, 0 being background)."""
  bbox = np.asarray(objects['bbox'], np.float32).reshape(-1, 4) * canvas_size  # ymin xmin ymax xmax
  return {'boxes': np.round(bbox[:, [1, 0, 3, 2]]).astype(np.float32),
          'labels': np.asarray(objects['label'], np.int64).reshape(-1) + 1}


def _xywh(box) -> List[float]:
  x0, y0, x1, y1 = (float(v) for v in box)
  return [x0, y0, x1 - x0, y1 - y0]


def coco_results(detections: Sequence[Mapping[str, np.ndarray]]) -> List[Dict]:
  """Per-image detections -> COCO result dicts (image_id = position in the sequence)."""
  return [{'image_id': i, 'category_id': int(c), 'bbox': _xywh(b), 'score': float(s)}
          for i, d in enumerate(detections)
          for b, c, s in zip(d['boxes'], d['labels'], d['scores'])]


def average_precision(ground_truth: Sequence[Mapping[str, np.ndarray]],
                      detections: Sequence[Mapping[str, np.ndarray]],
                      class_ids: Sequence[int]) -> Dict[str, object]:
  """COCO box AP with pycocotools' COCOeval.

  Args:
    ground_truth, detections: one dict per image, in the same order: 'boxes' [n, 4] (x0, y0, x1,
      y1) pixels, 'labels' [n] class ids; detections also 'scores' [n].
    class_ids: the categories evaluated (detections of other ids are ignored).

  Returns:
    {'ap': AP averaged over IoU 0.5:0.05:0.95, 'ap50', 'ap75', 'per_class_ap50': {id: AP@0.5,
    None for a class with no ground truth}}; values in [0, 1], all 0 when there is no detection.
  """
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  annotations = []
  for i, g in enumerate(ground_truth):
    for box, c in zip(g['boxes'], g['labels']):
      x, y, w, h = _xywh(box)
      # Ids start at 1: COCOeval marks unmatched detections with gt id 0.
      annotations.append({'id': len(annotations) + 1, 'image_id': i, 'category_id': int(c),
                          'bbox': [x, y, w, h], 'area': w * h, 'iscrowd': 0})
  results = [r for r in coco_results(detections) if r['category_id'] in set(class_ids)]
  has_gt = {int(c) for g in ground_truth for c in g['labels']}
  empty = {'ap': 0.0, 'ap50': 0.0, 'ap75': 0.0,
           'per_class_ap50': {int(c): (0.0 if int(c) in has_gt else None) for c in class_ids}}
  if not results or not annotations:
    return empty
  with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress and the summary table.
    coco_gt = COCO()
    coco_gt.dataset = {'images': [{'id': i} for i in range(len(ground_truth))],
                       'annotations': annotations,
                       'categories': [{'id': int(c)} for c in class_ids]}
    coco_gt.createIndex()
    evaluation = COCOeval(coco_gt, coco_gt.loadRes(results), 'bbox')
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  # precision: [IoU thresholds, recall points, categories, area ranges, max detections]; -1 = no
  # ground truth for that category.
  precision = evaluation.eval['precision'][0, :, :, 0, -1]
  per_class = {}
  for k, c in enumerate(evaluation.params.catIds):
    p = precision[:, k]
    per_class[int(c)] = float(p[p > -1].mean()) if (p > -1).any() else None
  stats = evaluation.stats
  return {'ap': float(stats[0]), 'ap50': float(stats[1]), 'ap75': float(stats[2]),
          'per_class_ap50': per_class}


def draw_boxes(image: np.ndarray, ground_truth: Mapping[str, np.ndarray],
               detections: Mapping[str, np.ndarray], scale: int = 4) -> np.ndarray:
  """uint8 RGB [h*scale, w*scale, 3]: the image enlarged, detections in their class colour (2 px),
  ground-truth boxes in white (1 px) over them."""
  from segae_jax.training import visualise
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, -1)
  picture = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                          Image.NEAREST)
  draw = ImageDraw.Draw(picture)
  corners = lambda box: [v * scale for v in box[:2]] + [v * scale - 1 for v in box[2:]]
  for box, c in zip(detections['boxes'], detections['labels']):
    colour = tuple(int(v) for v in visualise.colourise(np.array(c)))
    draw.rectangle(corners(box), outline=colour, width=2)
  # Ground truth last and 1 px wide: a detection on the same box still shows inside it.
  for box in ground_truth['boxes']:
    draw.rectangle(corners(box), outline=(255, 255, 255), width=1)
  return np.asarray(picture)


def _split_batches(source, batch_size: int, normalization):
  """(real examples, model inputs float32 [size, h, w, c] (the stored pixels through the run's
  `normalization`), valid float32 [size]) over the split in batches of size =
  min(batch_size, len(source)); the last is padded with example 0."""
  size = min(batch_size, len(source))
  for indices, valid in batching.chunks(len(source), size):
    examples = [source[int(i)] for i in indices]
    images = normalization(np.stack([e['image'] for e in examples]))
    yield examples[:int(valid.sum())], images, valid


def _detect_split(run, source, min_area: int, merge_radius: int, num_pictures: int,
                  batch_size: int):
  """Per image of the split: ground-truth boxes, detections from the model's masks and from the
  true masks (the oracle); and up to num_pictures pictures of the boxes (float [h, w, 3])."""
  from segae_jax.data import scenes
  probabilities = run.jit(common.seg_probabilities)
  num_classes = len(run.class_names)
  ground_truth, predicted, oracle, pictures = [], [], [], []
  for examples, images, valid in _split_batches(source, batch_size, run.normalization):
    probs = probabilities(images)[valid > 0]
    for example, image, p in zip(examples, images, probs):
      truth = scene_boxes(scenes.stack_objects(example['objects']), run.image_shape[0])
      found = components_to_detections(p, min_area, merge_radius)
      ground_truth.append(truth)
      predicted.append(found)
      one_hot = np.eye(num_classes, dtype=np.float32)[example['segmentation']]
      oracle.append(components_to_detections(one_hot, min_area, merge_radius))
      if len(pictures) < num_pictures:
        pictures.append(draw_boxes(image, truth, found) / 255.0)
  return ground_truth, predicted, oracle, pictures


def detect(workdir: str, split: str = 'test', checkpoint: str = 'best', min_area: int = 4,
           merge_radius: int = 3, num_pictures: int = 16, output: Optional[str] = None,
           batch_size: int = 200) -> Dict[str, object]:
  """Detects on every image of the split, scores AP, writes detections.json/.png; returns the
  summary (detections.json without the detection list).

  Raises:
    UserInputError: an `output` detect did not write or cannot write (checked first), no
      checkpoint, a model that does not segment, a dataset without boxes, or min_area < 1; an
      OSError of the writing (one line, `output` left as it was).
  """
  from segae_jax.training import writers
  from segae_jax.data import scenes

  if min_area < 1:
    raise UserInputError(f'--min_area must be >= 1, got {min_area}')
  if merge_radius < 0:
    raise UserInputError(f'--merge_radius must be >= 0, got {merge_radius}')
  # Results of an earlier version at the default place are known by their detections.json.
  legacy = None if output else 'detections.json'
  output = output or os.path.join(workdir, 'detect')
  outputs.check_folder(output, 'detect', legacy)
  run = common.load_run(workdir, checkpoint)
  if run.config.data.name != scenes.NAME:
    raise UserInputError(f'detection needs stored boxes: workdir {workdir} was trained on '
                         f'{run.config.data.name!r}, only {scenes.NAME!r} has them')
  run.require_segmentation(workdir)
  data_config = run.config.data
  builder = scenes.prepare(scenes.config_from(data_config), data_config.get('idx_dir', ''),
                           data_config.get('tfds_dir') or None)
  ground_truth, predicted, oracle, pictures = _detect_split(
      run, scenes.load_examples(builder, split), min_area, merge_radius, num_pictures, batch_size)

  class_ids = list(range(1, len(run.class_names)))
  scores = average_precision(ground_truth, predicted, class_ids)
  oracle_scores = average_precision(ground_truth, oracle, class_ids)
  names = run.class_names
  summary = {
      **common.result_header(workdir, run, model=False), 'split': split,
      'min_area': min_area, 'merge_radius': merge_radius, 'num_images': len(ground_truth),
      'num_ground_truth': int(sum(len(g['labels']) for g in ground_truth)),
      'num_detections': int(sum(len(d['labels']) for d in predicted)),
      'evaluator': 'pycocotools COCOeval (bbox, 101-point interpolation, maxDets 100)',
      'ap': scores['ap'], 'ap50': scores['ap50'], 'ap75': scores['ap75'],
      'per_class_ap50': {names[c]: v for c, v in scores['per_class_ap50'].items()},
      'oracle': {k: oracle_scores[k] for k in ('ap', 'ap50', 'ap75')},
  }
  with outputs.staged_folder(output, 'detect', legacy) as staging:
    writers.write_json(os.path.join(staging, 'detections.json'),
                       {**summary, 'categories': {c: names[c] for c in class_ids},
                        'detections': coco_results(predicted)})
    if pictures:
      writers.save_png(os.path.join(staging, 'detections.png'),
                       writers.image_grid(np.stack(pictures), min(len(pictures), 4)))
  return summary


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  summary = detect(FLAGS.workdir, FLAGS.split, FLAGS.checkpoint, FLAGS.min_area,
                   FLAGS.merge_radius, FLAGS.num_pictures, FLAGS.output)
  oracle = summary['oracle']
  print(f'{summary["num_detections"]} detections of {summary["num_ground_truth"]} objects on '
        f'{summary["num_images"]} {FLAGS.split} images ({summary["checkpoint"]} checkpoint, step '
        f'{summary["step"]}): AP {summary["ap"]:.3f}, AP50 {summary["ap50"]:.3f}, AP75 '
        f'{summary["ap75"]:.3f}; from the ground-truth masks: AP {oracle["ap"]:.3f}, AP50 '
        f'{oracle["ap50"]:.3f}')
  output = FLAGS.output or os.path.join(FLAGS.workdir, 'detect')
  print(f'wrote {os.path.join(output, "detections.json")}')


def run() -> None:
  """The installed command segae-detect (also python -m segae_jax.tools.detect)."""
  cli.run_command(main, define_flags, ['workdir'])


if __name__ == '__main__':
  run()
