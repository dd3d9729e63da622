"""Training scenes composed from the objects found without labels, with the classes their codes
were clustered into: the copy-paste augmentation (Ghiasi et al., "Simple Copy-Paste is a Strong
Data Augmentation Method for Instance Segmentation", CVPR 2021), here the only source of the
pixel-level head's masks. Pasted objects occlude each other as real ones do, so the head learns
to class the pixels of touching objects that the object route can only class as one.
"""
from typing import Sequence, Tuple

import numpy as np


def compose(singles: Sequence[Tuple[np.ndarray, np.ndarray, int]], shape: Sequence[int],
            num_objects: int, rng: np.random.Generator, fill: np.ndarray) -> Tuple[np.ndarray,
                                                                                 np.ndarray]:
  """One scene: `num_objects` objects drawn uniformly from `singles`, each at a uniform position
  where it fits, later ones painted over earlier ones.

  Args:
    singles: (pixels float32 [h, w, c], mask bool [h, w], class int >= 1) per object, each no
      larger than `shape`.
    shape: (height, width, channels) of the scene.
    num_objects: objects pasted.
    rng: draws the objects and their positions (object, then top, then left, per object).
    fill: float32 [channels], the background.

  Returns:
    (image float32 [height, width, channels], classes int64 [height, width], 0 = background).

  Raises:
    ValueError: an object larger than the scene.
  """
  height, width = shape[:2]
  image = np.broadcast_to(np.asarray(fill, np.float32), tuple(shape)).copy()
  classes = np.zeros((height, width), np.int64)
  for _ in range(num_objects):
    pixels, mask, label = singles[int(rng.integers(len(singles)))]
    h, w = mask.shape
    if h > height or w > width:
      raise ValueError(f'object of {h}x{w} pixels larger than the scene {height}x{width}')
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    window = (slice(top, top + h), slice(left, left + w))
    image[window][mask] = pixels[mask]
    classes[window][mask] = label
  return image, classes
