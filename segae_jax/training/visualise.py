"""Pictures of what a model learned: reconstruction grids, prior samples, segmentation panels."""
import functools

import jax
import numpy as np

from segae_jax.training import paths, writers

# Class 0 (background) black, then the 10 matplotlib "tab10" colours, then greys; cycles beyond.
_PALETTE = np.array([
    (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
], np.uint8)


def colourise(labels: np.ndarray) -> np.ndarray:
  """Label map int [..., h, w] -> RGB uint8 [..., h, w, 3] with a fixed palette (0 = black)."""
  return _PALETTE[np.asarray(labels) % len(_PALETTE)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """Blends the colourised labels over an image (float [h, w, c] in [0, 1] or uint8);
  background (label 0) stays the image. Returns uint8 [h, w, 3]."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  colour = colourise(labels).astype(np.float32)
  blend = np.where((np.asarray(labels) > 0)[..., None],
                   (1 - alpha) * image + alpha * colour, image)
  return np.round(blend).astype(np.uint8)


def preview(image: np.ndarray) -> np.ndarray:
  """What a picture shows of an image of any kind: uint8 [h, w, 1 | 3]. 8-bit grayscale or
  colour as it is; otherwise its first channel (or its first three of a 3-channel float image),
  stretched from its 0.5 to 99.5 percentiles to 0..255."""
  image = np.asarray(image)
  if image.dtype == np.uint8 and image.shape[-1] in (1, 3):
    return image
  shown = image[..., :3] if image.shape[-1] == 3 else image[..., :1]
  low, high = np.percentile(shown, (0.5, 99.5))
  scaled = (shown.astype(np.float32) - low) / max(float(high - low), 1e-12)
  return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def to_rgb(images: np.ndarray) -> np.ndarray:
  """Model inputs [b, h, w, c] -> float RGB in [0, 1]: 1 or 3 channels in [0, 1] as they are;
  other channel counts and standardised inputs through preview, image by image."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] not in (1, 3) or images.min() < 0 or images.max() > 1:
    images = np.stack([preview(image) for image in images]).astype(np.float32) / 255
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def write_pictures(model, variables, batch, rng: jax.Array, workdir: str,
                   writer: writers.MetricWriter, step: int, num_samples: int = 0) -> None:
  """Writes the PNG grids for `batch` (a test batch) into `workdir` and TensorBoard.

  - reconstructions.png (models with 'rec_logits'): rows of inputs above their reconstructions;
  - segmentation.png (models with 'seg_logits'): one row per image: image | ground truth |
    prediction | reconstruction (if any), labels in the fixed palette;
  - samples.png: `num_samples` draws from the prior, for models with a `sample` method.
  """
  outputs = jax.jit(functools.partial(model.apply, train=False))(
      variables, batch['image'], rngs={'reparam': rng, 'dropout': rng})
  inputs = np.asarray(batch.get('clean_image', batch['image']))
  n = len(inputs)
  pictures = {}
  recon = None
  if 'rec_logits' in outputs:
    recon = np.asarray(jax.nn.sigmoid(outputs['rec_logits']))
  if 'seg_logits' in outputs:
    prediction = np.asarray(np.argmax(outputs['seg_logits'], -1))
    panels = [to_rgb(inputs), colourise(batch['segmentation']) / 255.0,
              colourise(prediction) / 255.0]
    if recon is not None:
      panels.append(to_rgb(recon))
    tiles = np.stack(panels, axis=1).reshape((-1,) + panels[0].shape[1:])
    pictures['segmentation'] = writers.image_grid(tiles, len(panels))
  elif recon is not None:
    if inputs.shape[-1] not in (1, 3):  # A multi-channel stack: its first channel shown.
      inputs, recon = to_rgb(inputs), to_rgb(recon)
    cols = min(n, 8)
    rows = []
    for start in range(0, n, cols):  # Rows alternate: inputs, then their reconstructions.
      rows += [inputs[start:start + cols], recon[start:start + cols]]
    pictures['reconstructions'] = writers.image_grid(np.concatenate(rows), cols)
  if num_samples and hasattr(model, 'sample'):
    samples = jax.jit(model.apply, static_argnums=2, static_argnames='method')(
        variables, rng, num_samples, method=type(model).sample)
    samples = np.asarray(samples)
    if samples.shape[-1] not in (1, 3):
      samples = to_rgb(samples)
    pictures['samples'] = writers.image_grid(samples, min(num_samples, 8))
  for name, grid in pictures.items():
    writers.save_png(paths.join(workdir, f'{name}.png'), grid)
    writer.write_image(step, name, grid)
