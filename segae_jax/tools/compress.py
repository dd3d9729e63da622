"""The latent code as a lossy image format:
  python -m segae_jax.tools.compress --workdir=DIR [--bits=8] [--output=DIR/compress.json]
  python -m segae_jax.tools.compress --workdir=DIR --bits=2,4,8,16     # a rate-distortion table

For a trained `ae`, `sparse_ae` or `vae` run (latest checkpoint): every test image is encoded
(the posterior mean for the VAE), each code dimension is quantised to b bits, uniformly over
the range [min, max] that dimension takes on the TRAIN split's codes (test values outside it are
clipped), and the quantised code is decoded. The codes are computed once for every b in --bits.
Reports, and writes to --output:
  raw_bits_per_image  the uncompressed 8-bit image, h * w * c * 8 (6,272 for Fashion-MNIST);
  unquantised         pixel_mse and psnr (dB, mean over test images) of the image decoded from the
                      float code, against the grayscale test image in [0, 1];
  quantised           one entry per b: bits, bits_per_image = latent_dim * b (fixed-length code,
                      no entropy coding), compression_ratio = raw_bits_per_image / bits_per_image,
                      pixel_mse, psnr, psnr_vs_unquantised (dB, against the image decoded
                      from the float code: what quantisation alone changes), max_abs_error (of
                      the code, after clipping).
The per-dimension ranges (2 * latent_dim float32) and the decoder are shared side information,
sent once, not per image.

The JSON is written to a temporary file beside --output and renamed (tools.outputs); it records
{"segae_output": {"tool": "compress", ...}}, and an existing --output is overwritten only when it
holds that (or is <workdir>/compress.json, the default): anything else is refused before the codes
are computed.
"""
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from absl import flags

from segae_jax import cli
from segae_jax.errors import UserInputError
from segae_jax.tools import common, outputs

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  common.define_run_flags('Training workdir of an ae, sparse_ae or vae run.')
  flags.DEFINE_list('bits', ['8'], 'Bits per latent dimension, 1 to 16; a comma-separated list '
                    'measures each.')
  flags.DEFINE_string('output', None, 'JSON file to write (default <workdir>/compress.json): a '
                      'new file or a previous compress output, which is replaced.')

MIN_BITS, MAX_BITS = 1, 16


def bits_per_image(latent_dim: int, bits: int) -> int:
  """Size of one fixed-length quantised code in bits: latent_dim * bits."""
  return int(latent_dim) * int(bits)


def quantize(z: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
  """b-bit uniform quantisation indices.

  Args:
    z: float [..., latent_dim] codes.
    low, high: float [latent_dim] (or broadcastable) range per dimension, low <= high.
    bits: 1 to 16.
  Returns:
    int64 [..., latent_dim] in 0 .. 2**bits - 1: (clip(z) - low) / step rounded to the nearest
    integer (halves up), with step = (high - low) / (2**bits - 1); 0 where high == low.
  """
  levels = 2 ** int(bits) - 1
  z = np.asarray(z, np.float64)
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  width = high - low
  unit = np.where(width > 0, (np.clip(z, low, high) - low) / np.where(width > 0, width, 1.0), 0.0)
  return np.minimum(np.floor(unit * levels + 0.5), levels).astype(np.int64)  # Ties go up.


def dequantize(indices: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
  """Inverse of `quantize`: low + indices * step, float64 [..., latent_dim]."""
  levels = 2 ** int(bits) - 1
  low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
  return low + np.asarray(indices, np.float64) / levels * (high - low)


def uniform_quantize(z: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
  """Quantises and dequantises: the code the decoder sees after b-bit storage.

  Each dimension is clipped to [low, high] and snapped to the nearest of 2**bits evenly spaced
  levels low, low + step, ..., high (step = (high - low) / (2**bits - 1)), so inside the range
  |z - uniform_quantize(z)| <= step / 2.

  Args:
    z: float [..., latent_dim] codes.
    low, high: float [latent_dim] range per dimension (e.g. min and max over the train codes).
    bits: 1 to 16.
  Returns:
    float32 [..., latent_dim] (float64 if z is float64), same units as z.
  """
  out = dequantize(quantize(z, low, high, bits), low, high, bits)
  return out.astype(np.result_type(np.asarray(z).dtype, np.float32))


def parse_bits(values: Sequence) -> List[int]:
  """--bits values (ints or strings) -> sorted distinct ints, each checked to lie in 1..16.

  Raises:
    UserInputError: empty, not an integer, or out of range; the message names --bits.
  """
  out = []
  for v in values:
    try:
      b = int(str(v).strip())
    except ValueError:
      raise UserInputError(f'--bits: {v!r} is not an integer') from None
    if not MIN_BITS <= b <= MAX_BITS:
      raise UserInputError(f'--bits must be from {MIN_BITS} to {MAX_BITS}, got {b}')
    out.append(b)
  if not out:
    raise UserInputError('--bits is empty')
  return sorted(set(out))


def compress(workdir: str, bits: Union[int, Sequence] = 8, output: Optional[str] = None,
             checkpoint: str = 'latest') -> Dict:
  """Measures the quantised codes of the test split for each bit depth in `bits` (see the module
  docstring); writes and returns the JSON dict.

  Raises:
    UserInputError: --bits outside 1..16, an `output` that is a file compress did not write or
      cannot be written (checked first), not a workdir / no checkpoint, not an autoencoder; an
      OSError of the writing (one line, no partial file).
  """
  bit_depths = parse_bits([bits] if isinstance(bits, (int, str)) else bits)
  from segae_jax import data
  from segae_jax.tools import latents
  from segae_jax.training import metrics

  default = os.path.join(workdir, 'compress.json')  # The run's own file for this tool.
  output = output or default
  owned = os.path.abspath(output) == os.path.abspath(default)
  outputs.check_file(output, 'compress', owned)
  run = common.load_run(workdir, checkpoint)
  lm = latents.LatentModel(run)
  config = run.config
  dataset = data.build(config.data)
  train = lm.encode_split(dataset.train, dataset.preprocess, config.eval_batch_size, config.seed)
  low, high = train.mean.min(axis=0), train.mean.max(axis=0)
  test = lm.encode_split(dataset.test, dataset.preprocess, config.eval_batch_size, config.seed,
                         keep_images=True)

  def scores(codes, reference=None):
    recon = lm.decode(codes, config.eval_batch_size)
    mse = np.mean(np.square(recon - test.images).reshape(len(recon), -1), axis=-1)
    out = {'pixel_mse': float(mse.mean()),
           'psnr': float(np.mean(metrics.psnr(recon, test.images)))}
    if reference is not None:  # What quantisation alone changes in the decoded image.
      out['psnr_vs_unquantised'] = float(np.mean(metrics.psnr(recon, reference)))
    return out, recon

  h, w, c = lm.image_shape
  raw = h * w * c * 8
  clipped = np.clip(test.mean, low, high)
  unquantised, float_recon = scores(test.mean)
  quantised = []
  for b in bit_depths:
    q = uniform_quantize(test.mean, low, high, b)
    size = bits_per_image(lm.latent_dim, b)
    quantised.append({'bits': b, 'bits_per_image': size, 'compression_ratio': raw / size,
                      'max_abs_error': float(np.max(np.abs(q - clipped))),
                      **scores(q, float_recon)[0]})
  results = {
      **common.result_header(workdir, run), 'latent_dim': lm.latent_dim,
      'raw_bits_per_image': raw,
      'float32_bits_per_image': bits_per_image(lm.latent_dim, 32),
      'num_test_images': int(len(test.mean)), 'num_train_images': int(len(train.mean)),
      'clipped_fraction': float(np.mean((test.mean < low) | (test.mean > high))),
      'range_low': [float(v) for v in low], 'range_high': [float(v) for v in high],
      'unquantised': unquantised, 'quantised': quantised,
  }
  outputs.write_json(output, results, 'compress', owned)
  results['output'] = os.path.abspath(output)
  return results


TABLE_COLUMNS = (('bits/dim', '8d'), ('bits/image', '10d'), ('ratio', '7.1f'),
                 ('pixel MSE', '10.5f'), ('PSNR dB', '8.2f'), ('PSNR vs float code', '18.2f'))


def format_table(r: Dict) -> str:
  """The rate-distortion table of a compress() result: a title line, one row per bit depth, the
  unquantised float32 code, and the share of clipped code values."""
  u = r['unquantised']
  rows = [(q['bits'], q['bits_per_image'], q['compression_ratio'], q['pixel_mse'], q['psnr'],
           q['psnr_vs_unquantised']) for q in r['quantised']]
  rows.append(('float32', r['float32_bits_per_image'],
               r['raw_bits_per_image'] / r['float32_bits_per_image'], u['pixel_mse'], u['psnr']))
  return '\n'.join([
      f'{r["model"]} step {r["step"]}, latent {r["latent_dim"]}, raw image '
      f'{r["raw_bits_per_image"]} bits; test set ({r["num_test_images"]} images), PSNR vs the '
      'grayscale image:',
      common.format_table(TABLE_COLUMNS, rows) + '   (unquantised)',
      f'{r["clipped_fraction"]:.3%} of test code values fell outside the train range (clipped)'])


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results = compress(FLAGS.workdir, FLAGS.bits, FLAGS.output)
  print(format_table(results))
  print(f'wrote {results["output"]}')


def run() -> None:
  """The installed command segae-compress (also python -m segae_jax.tools.compress)."""
  cli.run_command(main, define_flags, ['workdir'])


if __name__ == '__main__':
  run()
