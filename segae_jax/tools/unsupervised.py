"""Label-free segmentation, scored against masks where they exist:
  python -m segae_jax.tools.unsupervised --workdir=DIR --config=configs/unsup_scenes.py
      [--input=FOLDER [--masks=FOLDER]]
  (configs/unsup_objects.py with --config.objects.workdir=VAE_RUN adds the object methods)

The methods of config.methods (METHODS), none of which reads a label to form its regions:
  autoencoder      per-pixel features, the encoder's feature maps at the chosen levels each
                   resized to the image (bilinear), optionally with the pixel's colour and (y, x)
                   position; k-means (scipy.cluster.vq's kmeans2, k-means++ initialisation)
                   fitted on pixels sampled from training images labels every pixel with its
                   nearest centre.
  baseline_pixels  the same clustering on the raw pixels (colour and position only).
  slic, felzenszwalb  scikit-image's partitions, segments clustered (tools.partitions).
  object_codes     connected objects classed by a mixture on an AE/VAE's codes of their windows
                   (tools.objects).
  pixel_head       a U-Net self-trained on those classes (tools.pixel_head), in its own workdir.

Scores: the clusters are matched one-to-one to the classes by the Hungarian algorithm on the
[classes, clusters] pixel-count matrix (tools.clusters), and the matched map is scored with mIoU
and pixel accuracy (pixels of unmatched clusters count as errors); foreground/background IoU
assigns each cluster to background or foreground by the majority of its pixels.

With --input, the regions of a folder of the user's own images are written, each at its own
resolution, every method fitted on them (the pixel head restored, never trained there): images
larger than the model's input get their encoder features, and the head its logits, by
sliding-window inference (tiles of the training size, --overlap, blended;
segae_jax.inference.tiling), the others are resized to the input (--mode=tile or resize forces
either). With --masks (label images of the same stems) the methods are scored the same way, with
a per-class IoU table.

Outputs in --output (default WORKDIR/unsupervised): unsupervised.json, regions.png (image | truth
| each method's regions, coloured by their matched class; split mode), per_class.md (--masks)
and, per image, <name>_regions.png (uint8 region ids of config.write_regions's method, at the
image's own size) and <name>_overlay.png. The folder is written beside its place and renamed into
it (tools.outputs), with a marker (.segae_output.json) naming this tool: an existing one is
replaced only when it is a previous unsupervised output (or empty; at the default place, one
holding unsupervised.json from before markers); anything else is refused before the model is
restored.
"""
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from segae_jax import batch as batch_lib, cli
from segae_jax.errors import UserInputError
from segae_jax.inference import scoring
from segae_jax.tools import clusters, common, outputs, partitions

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir of a U-Net-family autoencoder.')
  config_flags.DEFINE_config_file('config', None, 'Clustering config (configs/unsup_scenes.py).',
                                  lock_config=True)
  flags.DEFINE_string('input', None, 'A folder of images (or one image): regions, scored only '
                      'with --masks.')
  flags.DEFINE_string('masks', None, 'With --input: a folder of label images of the same stems '
                      'to score the regions against (per-class IoU table).')
  flags.DEFINE_string('output', None, 'Output folder (default WORKDIR/unsupervised): a new or '
                      'empty folder, or a previous unsupervised output, which is replaced.')
  common.define_inference_flags()


# ---------------------------------------------------------------------------------------------
# Features and clustering.

def pixel_grid(height: int, width: int) -> np.ndarray:
  """float32 [height, width, 2]: each pixel's (y, x) centre in [0, 1]."""
  y = (np.arange(height, dtype=np.float32) + 0.5) / height
  x = (np.arange(width, dtype=np.float32) + 0.5) / width
  return np.stack(np.meshgrid(y, x, indexing='ij'), -1)


class FeatureExtractor:
  """Per-pixel features of images: blocks of encoder feature maps (one per level), colour and
  position, each block standardised per dimension and scaled to weight / sqrt(its dimensions),
  so that every block adds weight^2 to the expected squared distance whatever its width.

  Args:
    run: a segae_jax.tools.common.TrainedRun of a U-Net-family model (its `encoder`), or None for
      the raw-pixel baseline (colour and position only).
    levels: encoder levels used (0 = full resolution ... L-1 = the bottleneck).
    feature_weight, colour_weight, position_weight: block weights; 0 leaves a block out.

  Raises:
    UserInputError: a model without a U-Net encoder, a level out of range, or all weights 0.
  """

  def __init__(self, run, levels: Sequence[int] = (), feature_weight: float = 1.0,
               colour_weight: float = 0.0, position_weight: float = 0.0):
    import jax
    self.levels = tuple(int(l) for l in levels) if run is not None and feature_weight > 0 else ()
    self.weights = {'colour': float(colour_weight), 'position': float(position_weight)}
    self._encode = None
    # Set for --input images of their own size: the encoder features of an image that is not of
    # the model's input size come tile by tile (inference.tiling), blended.
    self.tiles = None
    self._input_size = None if run is None else tuple(run.image_shape[:2])
    if self.levels:
      if not run.has_unet_encoder():
        raise UserInputError(
            f'workdir model {run.config.model.name!r} has no U-Net encoder; unsupervised '
            'segmentation reads the encoder of unet_ae, segae, vae_unet or unet')
      depth = len(run.model.features)
      bad = [l for l in self.levels if not 0 <= l < depth]
      if bad:
        raise UserInputError(f'config.levels {self.levels}: the model has levels 0..{depth - 1}')
      for level in self.levels:
        self.weights[f'level{level}'] = float(feature_weight)

      def encode(variables, images):
        maps = run.encoder_maps(variables, images)
        b, h, w, _ = images.shape
        return [jax.image.resize(maps[l], (b, h, w, maps[l].shape[-1]), 'bilinear')
                for l in self.levels]
      self._variables = run.variables
      self._encode = jax.jit(encode)
      self._dims = [int(run.model.features[l]) for l in self.levels]
    self.weights = {k: v for k, v in self.weights.items() if v > 0}
    self.standardizer = clusters.Standardizer(self.weights)  # Raises when every weight is 0.

  def raw(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """float32 images [b, h, w, c] in [0, 1] -> {block: float32 [b, h, w, dims]}."""
    b, h, w, _ = images.shape
    blocks = {}
    if self._encode is not None:
      for level, fmap in zip(self.levels, self._feature_maps(images)):
        blocks[f'level{level}'] = np.asarray(fmap)
    if 'colour' in self.weights:
      blocks['colour'] = np.asarray(images, np.float32)
    if 'position' in self.weights:
      blocks['position'] = np.broadcast_to(pixel_grid(h, w), (b, h, w, 2))
    return blocks

  def _feature_maps(self, images: np.ndarray) -> List[np.ndarray]:
    """The chosen levels' maps at the images' resolution, [b, h, w, features[l]] each."""
    if self.tiles is None or batch_lib.spatial_shape(images) == self._input_size:
      return self._encode(self._variables, images)
    fused = lambda tiles: np.concatenate(
        [np.asarray(m) for m in self._encode(self._variables, tiles)], -1)
    maps = np.stack([self.tiles.apply(fused, image) for image in images])
    return np.split(maps, np.cumsum(self._dims)[:-1], axis=-1)

  def fit(self, blocks: Mapping[str, np.ndarray]) -> None:
    """Learns each dimension's mean and scale from {block: [n, dims]} sample pixels."""
    self.standardizer.fit(dict(blocks))

  def transform(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
    """{block: [..., dims]} -> float32 [..., total dims], standardised and weighted
    (clusters.Standardizer)."""
    return self.standardizer.transform(dict(blocks))


class Clustering:
  """A fitted (FeatureExtractor, k-means centres) pair: `fit` on sample images, then `regions`."""

  def __init__(self, extractor: FeatureExtractor, config):
    self.extractor = extractor
    self.config = config
    self.centres = None

  def fit(self, image_batches, rng: np.random.Generator) -> None:
    """Samples config.fit_pixels_per_image pixels of every image and fits the centres."""
    samples: Dict[str, List[np.ndarray]] = {}
    for images in image_batches:
      blocks = self.extractor.raw(images)
      b, h, w = images.shape[:3]
      per_image = min(self.config.fit_pixels_per_image, h * w)
      picks = np.stack([rng.choice(h * w, per_image, replace=False) for _ in range(b)])
      for name, x in blocks.items():
        x = x.reshape(b, h * w, -1)
        samples.setdefault(name, []).append(np.take_along_axis(x, picks[..., None], 1)
                                            .reshape(-1, x.shape[-1]))
    sample = {name: np.concatenate(parts) for name, parts in samples.items()}
    self.extractor.fit(sample)
    self.centres = clusters.fit_kmeans(self.extractor.transform(sample), self.config.num_clusters,
                              self.config.kmeans_iterations, self.config.seed)

  def regions(self, images: np.ndarray) -> np.ndarray:
    """float32 images [b, h, w, c] -> int64 cluster ids [b, h, w]."""
    return clusters.assign(self.extractor.transform(self.extractor.raw(images)), self.centres)


# ---------------------------------------------------------------------------------------------
# The command.

def _batches(images: np.ndarray, batch_size: int):
  """images [n, ...] in consecutive batches of batch_size rows, the last one not padded: the
  clustering samples pixels of every row it sees."""
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size]


def _encoder_clustering(run, config) -> Clustering:
  """The encoder features' k-means (method 'autoencoder')."""
  return Clustering(FeatureExtractor(run, config.levels, config.feature_weight,
                                     config.colour_weight, config.position_weight), config)


METHODS = ('autoencoder', 'baseline_pixels', 'slic', 'felzenszwalb', 'object_codes',
           'pixel_head')


def _object_codes(config):
  """The objects method of config.objects (its workdir: an AE or VAE run whose codes class the
  objects)."""
  from segae_jax.tools import latents, objects
  if not config.objects.workdir:
    raise UserInputError('config.objects.workdir is not set: the object methods need an AE or '
                         'VAE run whose codes class the objects (configs/unsup_objects.py)')
  coder = latents.LatentModel(common.load_run(config.objects.workdir,
                                              config.objects.checkpoint))
  return objects.ObjectCodes(coder, config.objects)


def _pixel_head(workdir: str, config, object_codes):
  """The self-trained head of config.head, in config.head.workdir (default WORKDIR/pixel_head),
  each round started from `workdir`'s weights."""
  from segae_jax.tools import pixel_head
  head = config.head
  head_workdir = head.workdir or os.path.join(workdir, 'pixel_head')
  head.workdir = head_workdir  # Recorded in unsupervised.json's config.
  definition = {'objects': config.objects.to_dict(),
                'head': {k: v for k, v in head.to_dict().items()
                         if k not in ('workdir', 'batch_size')},
                'init_from': os.path.abspath(workdir)}
  return pixel_head.PixelHead(object_codes, head, os.path.abspath(workdir), definition)


def _methods(run, config, workdir: str, names: Sequence[str]) -> Dict[str, object]:
  """The methods `names` (of config.methods), built by result name: the encoder features'
  k-means ('autoencoder'), the raw pixels' ('baseline_pixels'), each classical partition of
  config.partitions ('slic', 'felzenszwalb': scikit-image's parameters), its segments clustered
  on the raw-pixel baseline's blocks, the objects classed by their codes ('object_codes',
  config.objects) and the head self-trained on them ('pixel_head', config.head).

  Raises:
    UserInputError: an unknown method, or a method whose block is missing or unset.
  """
  unknown = [m for m in config.methods if m not in METHODS]
  if unknown:
    raise UserInputError(f'config.methods: unknown {unknown[0]!r}; expected some of '
                         f'{", ".join(METHODS)}')
  weights = (config.baseline.colour_weight, config.baseline.position_weight)
  methods = {}
  for name in names:
    if name == 'autoencoder':
      methods[name] = _encoder_clustering(run, config)
    elif name == 'baseline_pixels':
      methods[name] = Clustering(FeatureExtractor(None, (), 0.0, *weights), config)
    elif name in partitions.PARTITIONS:
      methods[name] = partitions.PartitionClustering(
          name, config.partitions[name], dict(zip(('colour', 'position'), weights)),
          config.num_clusters, config.kmeans_iterations, config.seed)
  if 'object_codes' in names or 'pixel_head' in names:
    object_codes = _object_codes(config)  # One fit serves both: the head learns its classes.
    if 'object_codes' in names:
      methods['object_codes'] = object_codes
    if 'pixel_head' in names:
      methods['pixel_head'] = _pixel_head(workdir, config, object_codes)
  return {name: methods[name] for name in names}


def _region_pictures(cluster_ids: np.ndarray, assignment: Sequence[int], num_classes: int):
  """Cluster ids -> colours of their matched class (unmatched: palette entries past the classes)."""
  from segae_jax.training import visualise
  assignment = np.asarray(assignment)
  unmatched = num_classes + np.cumsum(assignment < 0) - 1
  as_class = np.where(assignment >= 0, assignment, unmatched)
  return visualise.colourise(as_class[cluster_ids]) / 255.0


def _training_images(dataset, count: int, seed: int) -> np.ndarray:
  """`count` training images (0: all) drawn by `seed`, in index order, preprocessed for
  evaluation (model units)."""
  from segae_jax import data
  source = dataset.train
  count = len(source) if count <= 0 else min(count, len(source))
  index = np.sort(np.random.default_rng(seed).choice(len(source), count, replace=False))
  return dataset.preprocess(source.__getitems__(index), data.eval_rngs(seed, index))['image']


def _split_images(dataset, config):
  """(the config.split images, their masks): the split's first config.max_images (0: all)."""
  from segae_jax import data
  source = dataset.train if config.split == 'train' else dataset.test
  count = len(source) if config.max_images <= 0 else min(config.max_images, len(source))
  examples = dataset.preprocess(source.__getitems__(np.arange(count)),
                                data.eval_rngs(config.seed, np.arange(count)))
  return examples['image'], examples['segmentation']


def _fit_count(name: str, config) -> int:
  """How many training images fit method `name` (0: all): the object methods take
  config.objects.fit_images, the others config.fit_images."""
  if name in ('object_codes', 'pixel_head'):
    return config.objects.fit_images
  return config.fit_images


def _scored(method, fit_images, images, labels, class_names, config):
  """Fits `method` on fit_images, segments `images`: (its scores, the first num_pictures maps)."""
  num_classes = len(class_names)
  k = max(config.num_clusters, num_classes)  # Object methods give a class per cluster + 0.
  method.fit(_batches(fit_images, config.batch_size), np.random.default_rng(config.seed))
  confusion = np.zeros((num_classes, k), np.int64)
  maps = []
  for chunk, truth in zip(_batches(images, config.batch_size), _batches(labels, config.batch_size)):
    regions = method.regions(chunk)
    confusion += scoring.confusion_counts(truth, regions, num_classes, k)
    maps.append(regions[:config.num_pictures - sum(len(m) for m in maps)])  # The first ones.
  return clusters.scores(confusion, class_names), np.concatenate(maps)


def segment_split(run, config, output: str, workdir: str) -> Dict[str, object]:
  """Fits every method on training images, segments the config.split images, scores each
  against their masks; regions.png shows image | truth | each method's regions."""
  from segae_jax import data
  from segae_jax.training import visualise, writers
  dataset = data.build(run.config.data)
  if 'segmentation' not in dataset.test.__getitems__([0]):
    raise UserInputError(f'dataset {dataset.name!r} has no masks to score against; use --input '
                         'for regions only')
  images, labels = _split_images(dataset, config)
  written = config.write_regions  # Whose region maps are written per image (validated).
  results, regions, fitted = {}, {}, {}
  for name, method in _methods(run, config, workdir, config.methods).items():
    count = _fit_count(name, config)
    if count not in fitted:
      fitted[count] = _training_images(dataset, count, config.seed)
    results[name], regions[name] = _scored(method, fitted[count], images, labels,
                                           dataset.class_names, config)
    results[name]['num_fit_images'] = len(fitted[count])
  shown = min(config.num_pictures, len(images))
  if shown:
    panels = [visualise.to_rgb(images[:shown]), visualise.colourise(labels[:shown]) / 255.0]
    panels += [_region_pictures(regions[n][:shown], results[n]['assignment'],
                                dataset.num_classes) for n in results]
    tiles = np.stack(panels, 1).reshape((-1,) + panels[0].shape[1:])
    writers.save_png(os.path.join(output, 'regions.png'),
                     writers.image_grid(tiles, len(panels)))
    for i in range(shown):
      _write_regions(output, f'{config.split}_{i:05d}', images[i], regions[written][i])
  return {'split': config.split, 'num_images': len(images), 'written': written,
          'methods': list(results), **results}


def _write_regions(output: str, stem: str, image: np.ndarray, cluster_ids: np.ndarray) -> None:
  """<stem>_regions.png (uint8 cluster ids [h, w]) and <stem>_overlay.png over `image` (model
  units [h, w, c], the same size)."""
  from PIL import Image
  from segae_jax.training import visualise
  regions = Image.fromarray(cluster_ids.astype(np.uint8))
  rgb = visualise.to_rgb(np.asarray(image)[None])[0]
  picture = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
  regions.save(os.path.join(output, f'{stem}_regions.png'))
  # Cluster ids + 1 for the colours: the overlay leaves label 0 uncoloured.
  Image.fromarray(visualise.overlay(np.asarray(picture), np.asarray(regions).astype(np.int64) + 1)
                  ).save(os.path.join(output, f'{stem}_overlay.png'))


def _encoder_regions(run, config, native, tiled, tiles) -> List[np.ndarray]:
  """The encoder k-means's cluster ids of each image at its own size: fitted on every image,
  images larger than the model tiled (`tiles`) and the others resized to the input and their
  maps back (nearest)."""
  from segae_jax.data import sizing
  size = run.image_shape[:2]
  model = _encoder_clustering(run, config)
  if any(tiled):
    model.extractor.tiles = tiles
  resized = [i for i, t in enumerate(tiled) if not t]
  stacked = np.stack([sizing.resize_image(native[i], size) for i in resized]) if resized \
      else np.zeros((0,) + tuple(run.image_shape), np.float32)
  batches = list(_batches(stacked, config.batch_size)) + [native[i][None] for i, t in
                                                          enumerate(tiled) if t]
  order = resized + [i for i, t in enumerate(tiled) if t]
  model.fit(batches, np.random.default_rng(config.seed))
  maps: List[Optional[np.ndarray]] = [None] * len(native)
  for i, regions in zip(order, (c for b in batches for c in model.regions(b))):
    maps[i] = sizing.resize_mask(regions.astype(np.uint8), native[i].shape[:2])
  return maps


def _folder_methods(run, config, workdir: str, inference: common.Inference):
  """config.methods but the encoder's k-means, for images of any size: the pixel head restored
  from its workdir (never trained here)."""
  methods = _methods(run, config, workdir,
                     [name for name in config.methods if name != 'autoencoder'])
  if 'pixel_head' in methods:
    methods['pixel_head'].restore(inference)
  return methods


def _read_masks(files: Sequence[str], masks_path: str,
                pixels: Sequence[np.ndarray]) -> List[np.ndarray]:
  """The label image of each file's stem in masks_path, int64 [h, w] of its image's size
  (`pixels`, the files' images [h, w, c]).

  Raises:
    UserInputError: a file without a mask or back, or a mask of another size than its image.
  """
  from segae_jax.data.images import list_image_files, read_label_image
  masks = list_image_files(masks_path, 'mask')
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  for f, stem in zip(files, stems):
    if stem not in masks:
      raise UserInputError(f'{f}: image without a mask (no {stem}.<ext> in {masks_path})')
  out = [np.asarray(read_label_image(masks[stem]), np.int64) for stem in stems]
  for f, p, m in zip(files, pixels, out):
    if m.shape != p.shape[:2]:
      raise UserInputError(f'{masks_path}: the mask of {f} is {m.shape[0]}x{m.shape[1]}, its '
                           f'image {p.shape[0]}x{p.shape[1]} (height x width)')
  return out


def _folder_scores(maps: Mapping[str, Sequence[np.ndarray]], masks: Sequence[np.ndarray],
                   config) -> Dict[str, object]:
  """Each method's scores against the masks at the images' own sizes (classes: the largest
  label + 1, at least 2), and the per-class IoU table (markdown)."""
  num_classes = max(2, int(max(m.max() for m in masks)) + 1)
  names = [f'class_{c}' for c in range(num_classes)]
  k = max(config.num_clusters, num_classes)
  results = {}
  for name, regions in maps.items():
    confusion = sum(scoring.confusion_counts(m, r, num_classes, k) for m, r in zip(masks, regions))
    results[name] = clusters.scores(confusion, names)
  columns = [('class', '<10')] + [(name, '.3f') for name in maps]
  rows = [[c] + [results[name]['per_class_iou'][c] for name in maps] for c in names]
  return {'num_classes': num_classes, 'scores': results,
          'per_class_table': common.format_table(columns, rows, markdown=True)}


def segment_folder(run, config, input_path: str, output: str, inference: common.Inference,
                   tiles, workdir: str, masks_path: Optional[str] = None) -> Dict[str, object]:
  """Regions of the user's images, each at its own size, by every method of config.methods:
  the encoder's k-means fitted on them (tiled with `tiles`, an inference.tiling.Tiling, or
  resized, per image as run.uses_tiles says), the others on the images at their own size; the
  config.write_regions method's maps written per image. With `masks_path` (label images of the
  same stems), the methods are scored against them with a per-class IoU table."""
  from segae_jax.data import images as image_files
  files = image_files.list_images(input_path)
  pixels = [common.read_input(f, run) for f in files]  # All checked first.
  masks = _read_masks(files, masks_path, pixels) if masks_path else None
  native = [run.normalization(p) for p in pixels]  # The training pipeline's model units.
  tiled = [run.uses_tiles(inference, *p.shape[:2]) for p in pixels]
  maps = {}
  for name, method in _folder_methods(run, config, workdir, inference).items():
    singles = [image[None] for image in native]
    method.fit(singles, np.random.default_rng(config.seed))
    maps[name] = [method.regions(image)[0] for image in singles]
  if 'autoencoder' in config.methods:
    maps['autoencoder'] = _encoder_regions(run, config, native, tiled, tiles)
  maps = {name: maps[name] for name in config.methods}
  for i, regions in enumerate(maps[config.write_regions]):
    stem = os.path.splitext(os.path.basename(files[i]))[0]
    _write_regions(output, stem, native[i], regions)
  results = {'input': os.path.abspath(input_path), 'num_images': len(files),
             'num_tiled': int(sum(tiled)), 'methods': list(maps),
             'written': config.write_regions}
  if masks is not None:
    results.update(_folder_scores(maps, masks, config), masks=os.path.abspath(masks_path))
    with open(os.path.join(output, 'per_class.md'), 'w', encoding='utf-8') as f:
      f.write(results['per_class_table'] + '\n')
  return results


def _validate_objects(config) -> None:
  """The object methods' blocks: raises UserInputError naming the first bad field."""
  objects = config.objects
  checks = [('objects.single_quantile', 0.0 < objects.single_quantile <= 1.0, 'in (0, 1]'),
            ('objects.num_clusters', objects.num_clusters >= 2, '>= 2'),
            ('objects.single_min_pixels', objects.single_min_pixels >= 0, '>= 0')]
  if 'pixel_head' in config.methods:
    head = config.head
    checks += [('head.rounds', head.rounds in (1, 2), '1 or 2'),
               ('head.threshold', 0.0 <= head.threshold <= 1.0, 'in [0, 1]')]
    checks += [(f'head.{f}', head[f] >= 1, '>= 1')
               for f in ('steps', 'composites', 'test_composites', 'max_objects', 'batch_size')]
  for field, good, expected in checks:
    if not good:
      block, key = field.split('.')
      raise UserInputError(f'config.{field} must be {expected}, got {config[block][key]!r}')


def validate(config) -> None:
  """Raises UserInputError naming the first bad field of an unsupervised config."""
  if config.split not in ('train', 'test'):
    raise UserInputError(f"config.split must be 'train' or 'test', got {config.split!r}")
  for field in ('fit_images', 'fit_pixels_per_image', 'kmeans_iterations', 'batch_size'):
    if config[field] < 1:
      raise UserInputError(f'config.{field} must be >= 1, got {config[field]}')
  if config.num_clusters < 2:
    raise UserInputError(f'config.num_clusters must be >= 2, got {config.num_clusters}')
  if config.write_regions not in config.methods:
    raise UserInputError(f'config.write_regions={config.write_regions!r} is not one of '
                         f'config.methods {tuple(config.methods)}')
  if 'object_codes' in config.methods or 'pixel_head' in config.methods:
    _validate_objects(config)


def run_unsupervised(workdir: str, config, input_path: Optional[str] = None,
                     output: Optional[str] = None, checkpoint: str = 'latest',
                     inference: Optional[common.Inference] = None,
                     masks_path: Optional[str] = None) -> Dict[str, object]:
  """Restores the run, segments (the split, or `input_path`'s images), scores (the split, or
  the images against `masks_path`'s label images) and writes unsupervised.json; returns it.

  Raises:
    UserInputError: bad config, an `output` this tool did not write or cannot write (checked
      first), no checkpoint, a model without a U-Net encoder, unreadable input; an OSError of
      the writing (one line, `output` left as it was).
  """
  from segae_jax.training import writers
  validate(config)
  if masks_path and not input_path:
    raise UserInputError('--masks scores the images of --input; the split has its own masks')
  # Results of an earlier version at the default place are known by their unsupervised.json.
  legacy = None if output else 'unsupervised.json'
  output = output or os.path.join(workdir, 'unsupervised')
  outputs.check_folder(output, 'unsupervised', legacy)
  run = common.load_run(workdir, checkpoint)
  if input_path:  # A bad --tile_size fails before the output folder exists.
    inference = inference or common.Inference()
    tiles = run.make_tiling(inference, config.batch_size)
  with outputs.staged_folder(output, 'unsupervised', legacy) as staging:
    if input_path:
      results = segment_folder(run, config, input_path, staging, inference, tiles, workdir,
                               masks_path)
    else:
      results = segment_split(run, config, staging, workdir)
    results = {**common.result_header(workdir, run, checkpoint=False),
               'config': config.to_dict(), **results}
    writers.write_json(os.path.join(staging, 'unsupervised.json'), results)
  return results


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results = run_unsupervised(FLAGS.workdir, FLAGS.config, FLAGS.input, FLAGS.output,
                             inference=common.Inference.from_flags(), masks_path=FLAGS.masks)
  output = FLAGS.output or os.path.join(FLAGS.workdir, 'unsupervised')
  # The split's scores, or those of --input's images against --masks.
  scored = results.get('scores') or (
      {name: results[name] for name in results['methods']} if 'split' in results else {})
  for name, r in scored.items():
    print(f'{name:>16}: matched mIoU {r["miou"]:.3f}, pixel accuracy '
          f'{r["pixel_accuracy"]:.3f}, foreground IoU {r["foreground_iou"]:.3f}')
  if 'per_class_table' in results:
    print(results['per_class_table'])
  print(f'regions of {results["num_images"]} images in {output}')


def run() -> None:
  """The installed command segae-unsupervised (also python -m segae_jax.tools.unsupervised)."""
  cli.run_command(main, define_flags, ['workdir', 'config'])


if __name__ == '__main__':
  run()
