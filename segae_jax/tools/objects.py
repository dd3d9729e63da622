"""Objects found without labels, and classed by an autoencoder's code of each object's window.

The object-level route to label-free segmentation (deep clustering of whole objects by their
autoencoder codes: DEC, Xie et al. ICML 2016; IDEC, Guo et al. IJCAI 2017): the foreground is
split into connected components (scipy.ndimage), each component's window is cut out, scaled and
centred like the autoencoder's training images, and encoded (the VAE's posterior mean or the
AE's code); the codes are clustered into classes and each object's pixels are painted with its
class.

Touching objects form one component. The autoencoder tells them apart: a window holding two
objects is unlike any training image and reconstructs worse (the single-object filter of
`ObjectCodes.fit`), so the clusters are fitted on the components most likely to be one object.
"""
from typing import Iterable, List, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from segae_jax.errors import UserInputError
from segae_jax.tools import clusters


def components(foreground: np.ndarray, min_pixels: int) -> Tuple[np.ndarray, int]:
  """The objects of one foreground map.

  Holes inside a component (pixels of background enclosed by it) are filled first, so a bag's
  handle or a garment's dark print belongs to its object.

  Args:
    foreground: bool [height, width].
    min_pixels: components with fewer pixels go back to the background.

  Returns:
    (int32 [height, width] object ids, 0 = background and 1..n the objects in raster order of
     their first pixel; n).
  """
  filled = ndimage.binary_fill_holes(np.asarray(foreground, bool))
  labels, count = ndimage.label(filled)  # 4-connectivity, scipy's default structure.
  sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
  keep = sizes >= max(int(min_pixels), 1)
  keep[0] = False
  new_ids = np.zeros(count + 1, np.int32)
  new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
  return new_ids[labels], int(keep.sum())


def window(image: np.ndarray, mask: np.ndarray, canvas: Sequence[int], side: int,
           fill: float = 0.0) -> np.ndarray:
  """One object cut out and placed like an autoencoder's training image.

  The object's bounding box is cut from `image`, its pixels outside `mask` set to `fill` (the
  background: other objects in the box are removed), scaled (bilinear, aspect kept) so that its
  longer side is `side` pixels, and centred on a canvas of `fill`.

  Args:
    image: float32 [height, width, channels].
    mask: bool [height, width], the object's pixels (not empty).
    canvas: (height, width) of the output.
    side: the object's longer side on the canvas, pixels (<= min(canvas)).
    fill: the background value.

  Returns:
    float32 [canvas height, canvas width, channels].

  Raises:
    ValueError: an empty mask or a side larger than the canvas.
  """
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if not len(rows):
    raise ValueError('window of an empty mask')
  if side > min(canvas):
    raise ValueError(f'side {side} larger than the canvas {tuple(canvas)}')
  box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  cut = np.where(mask[box][..., None], image[box], fill).astype(np.float32)
  h, w = cut.shape[:2]
  scale = side / max(h, w)
  nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
  scaled = np.stack([np.asarray(Image.fromarray(cut[..., c]).resize((nw, nh), Image.BILINEAR))
                     for c in range(cut.shape[-1])], -1)
  out = np.full(tuple(canvas) + (cut.shape[-1],), fill, np.float32)
  top, left = (canvas[0] - nh) // 2, (canvas[1] - nw) // 2
  out[top:top + nh, left:left + nw] = scaled
  return out


def paint(objects: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """Object ids int [h, w] (0 background, 1..n) and each object's class (n values, >= 1) ->
  int64 [h, w] class map, 0 where there is no object."""
  table = np.concatenate([[0], np.asarray(classes, np.int64)])
  return table[objects]


def object_sizes(maps: Sequence[np.ndarray]) -> np.ndarray:
  """int64 [n]: each object's size in pixels, in map then id order (the order of
  `ObjectCodes.windows`), for object id maps int [h, w] (0 background, 1..n)."""
  return np.concatenate([np.bincount(np.ravel(ids))[1:] for ids in maps]
                        + [np.zeros(0, np.int64)])


def likely_singles(errors: np.ndarray, sizes: np.ndarray, quantile: float,
                   min_pixels: int) -> np.ndarray:
  """Which components to take as single objects: among those of at least `min_pixels` pixels,
  the ones whose reconstruction error is at most the `quantile` of theirs.

  The size floor is there because dark seams inside a garment cut off small pieces of it: such a
  piece reconstructs well (it is nearly empty) but its window carries no class, and on the
  Fashion-MNIST scenes the pieces under 24 pixels were most of the components kept by error
  alone (benchmarks/object_classes.py).

  Args:
    errors: float [n], each component's reconstruction error.
    sizes: int [n], each component's size in pixels.
    quantile: in (0, 1].
    min_pixels: components with fewer pixels are never single.

  Returns:
    bool [n].
  """
  errors, sizes = np.asarray(errors), np.asarray(sizes)
  large = sizes >= min_pixels
  if not large.any():
    return large
  return large & (errors <= np.quantile(errors[large], quantile))


def border_background(image: np.ndarray) -> np.ndarray:
  """The background value of an image: per channel, the most common value among its border
  pixels (float32 [channels]); image float32 [height, width, channels]."""
  border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
  out = []
  for c in range(image.shape[-1]):
    values, counts = np.unique(border[:, c], return_counts=True)
    out.append(values[counts.argmax()])
  return np.asarray(out, np.float32)


def uniform_foreground(image: np.ndarray, tolerance: float) -> np.ndarray:
  """bool [height, width]: the pixels differing from the border's background value by more than
  `tolerance` (model units) in some channel; for images on a uniform background."""
  return (np.abs(image - border_background(image)) > tolerance).any(-1)


class ObjectCodes:
  """Objects classed by the clusters of their autoencoder codes (the module docstring).

  Args:
    coder: encodes windows: `encode(float32 [n, h, w, c]) -> (codes [n, d], _)` and
      `decode(codes) -> float32 [n, h, w, c]` (segae_jax.tools.latents.LatentModel of a VAE or
      AE run; the VAE's code is its posterior mean).
    config: the `objects` block of the unsupervised config: num_clusters (object classes; the
      background is one more), tolerance, min_pixels, side, single_quantile,
      single_min_pixels, mixture
      ('gmm' or 'kmeans'), iterations, seed.

  Raises:
    UserInputError: a coder whose images have another channel count than the segmented ones
      (at fit).
  """

  def __init__(self, coder, config):
    self.coder = coder
    self.config = config
    self.canvas = tuple(coder.image_shape[:2])
    self.model = None
    self.background = None  # float32 [channels]: the median border background of the fit images.
    self.singles = []  # (pixels [h, w, c], mask [h, w], class >= 1) of the fitted singles.

  def find(self, images: np.ndarray) -> List[np.ndarray]:
    """float32 images [b, h, w, c] -> their object id maps (`components`), int32 [h, w] each."""
    return [components(uniform_foreground(image, self.config.tolerance),
                       self.config.min_pixels)[0] for image in images]

  def windows(self, images: np.ndarray, maps: Sequence[np.ndarray]) -> np.ndarray:
    """Every object's window, in image then id order: float32 [n, canvas h, canvas w, c]."""
    if images.shape[-1] != self.coder.image_shape[-1]:
      raise UserInputError(f'images of {images.shape[-1]} channels; the objects workdir\'s '
                           f'autoencoder encodes {self.coder.image_shape[-1]}')
    out = [window(image, ids == i, self.canvas, self.config.side, border_background(image))
           for image, ids in zip(images, maps) for i in range(1, int(ids.max()) + 1)]
    return np.stack(out) if out else np.zeros((0,) + self.canvas + images.shape[-1:], np.float32)

  def codes(self, windows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(codes float32 [n, d], reconstruction error float32 [n]: the mean squared error of the
    decoded code against the window, model units squared)."""
    codes, errors = [], []
    for start in range(0, len(windows), 1000):
      chunk = windows[start:start + 1000]
      z = self.coder.encode(chunk)[0]
      codes.append(z)
      errors.append(((self.coder.decode(z) - chunk) ** 2).mean((1, 2, 3)))
    return np.concatenate(codes), np.concatenate(errors)

  def _cluster(self, codes: np.ndarray) -> None:
    c = self.config
    if c.mixture == 'gmm':
      from sklearn import mixture
      self.model = mixture.GaussianMixture(c.num_clusters, covariance_type='full',
                                           n_init=c.mixture_inits, random_state=c.seed).fit(codes)
    elif c.mixture == 'kmeans':
      self.model = clusters.fit_kmeans(codes, c.num_clusters, c.iterations, c.seed,
                                       'config.objects.num_clusters')
    else:
      raise UserInputError(f"config.objects.mixture={c.mixture!r}: expected 'gmm' or 'kmeans'")

  def classes(self, codes: np.ndarray) -> np.ndarray:
    """Codes [n, d] -> int64 [n] object classes 1..num_clusters (0 is the background)."""
    if not len(codes):
      return np.zeros(0, np.int64)
    if isinstance(self.model, np.ndarray):
      return clusters.assign(codes, self.model) + 1
    return self.model.predict(codes).astype(np.int64) + 1

  def fit(self, image_batches: Iterable[np.ndarray], rng: np.random.Generator) -> None:
    """Finds the objects of the images (float32 [b, h, w, c] batches), keeps those of at least
    `single_min_pixels` pixels that reconstruct best (`likely_singles`, the `single_quantile`
    fraction) as the likely single objects, and fits the mixture on their codes; `self.singles`
    keeps them with their classes.

    Raises:
      UserInputError: fewer likely single objects than clusters.
    """
    del rng  # Every object is used; the mixture is seeded by config.objects.seed.
    found, backgrounds = [], []
    for images in image_batches:
      backgrounds += [border_background(image) for image in images]
      maps = self.find(images)
      found.append((images, maps, *self.codes(self.windows(images, maps))))
    errors = np.concatenate([f[3] for f in found])
    sizes = object_sizes([ids for f in found for ids in f[1]])
    single = likely_singles(errors, sizes, self.config.single_quantile,
                            self.config.single_min_pixels)
    codes = np.concatenate([f[2] for f in found])
    if single.sum() < max(self.config.num_clusters, 2):
      raise UserInputError(f'{int(single.sum())} likely single objects found; '
                           f'config.objects.num_clusters={self.config.num_clusters} needs more '
                           '(more fit images, or a lower objects.single_min_pixels)')
    self._cluster(codes[single])
    self.background = np.median(np.stack(backgrounds), 0).astype(np.float32)
    self.singles = list(self._cut_singles(found, single, self.classes(codes)))

  @staticmethod
  def _cut_singles(found, single: np.ndarray, classes: np.ndarray):
    """(pixels, mask, class) of each object flagged single, cut to its bounding box."""
    index = 0
    for images, maps, _, _ in found:
      for image, ids in zip(images, maps):
        for i in range(1, int(ids.max()) + 1):
          if single[index]:
            mask = ids == i
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            yield image[box], mask[box], int(classes[index])
          index += 1

  def regions(self, images: np.ndarray) -> np.ndarray:
    """float32 images [b, h, w, c] -> int64 class maps [b, h, w] (0 background)."""
    maps = self.find(images)
    classes = self.classes(self.codes(self.windows(images, maps))[0])
    out, start = [], 0
    for ids in maps:
      n = int(ids.max())
      out.append(paint(ids, classes[start:start + n]))
      start += n
    return np.stack(out)
