"""Pictures of what a trained AE/VAE's code space holds:
  python -m segae_jax.tools.generate --workdir=DIR [--num=64] [--seed=0] [--output=DIR/generate]

Restores the latest checkpoint of an `ae`, `sparse_ae` or `vae` run and writes into --output:
  samples.png          --num decodings of z ~ N(0, I) (VAE only);
  reconstructions.png  --num test images (odd rows) above their reconstructions (even rows),
                       decoded from the code (the posterior mean for the VAE);
  interpolations.png   one row per pair of test images: image A | decodings of --steps codes on
                       the line from code(A) to code(B), both ends included | image B;
  traversals.png       one row per latent dimension among the --dims with the largest average KL
                       over the test set (VAE; variance of the code for an AE): a test image,
                       then its code decoded with that one dimension moved by
                       -3..+3 standard deviations (prior sd 1 for the VAE, the dimension's test-set
                       sd for an AE), the middle column being the unchanged code;
  generate.json        what was written, the step, the test images used, the traversed dims with
                       their KL (nats) and the KL of every dimension.
Test images are drawn from the test split with --seed. Asking for samples (--pictures=samples) of
a non-VAE run is an error; by default every picture the model supports is written.

--output is written beside its place and renamed into it (tools.outputs), with a marker
(.segae_output.json) naming this tool: an existing folder is replaced only when it is a previous
generate output (or empty; at the default place, one holding generate.json from before markers);
anything else is refused before the model is restored.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

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
  flags.DEFINE_string('output', None, 'Folder for the pictures (default <workdir>/generate): a '
                      'new or empty folder, or a previous generate output, which is replaced.')
  flags.DEFINE_integer('num', 64, 'Prior samples, and test images to reconstruct.')
  flags.DEFINE_integer('seed', 0, 'Seeds the prior samples and the choice of test images.')
  flags.DEFINE_list('pictures', ['all'], 'Comma-separated subset of samples, reconstructions, '
                    'interpolations, traversals; "all" = every one the model supports.')
  flags.DEFINE_integer('pairs', 8, 'Interpolation rows (pairs of test images).')
  flags.DEFINE_integer('steps', 10, 'Decoded codes per interpolation row, both ends included.')
  flags.DEFINE_integer('dims', 8, 'Latent dimensions to traverse (those with the largest KL).')


PICTURES = ('samples', 'reconstructions', 'interpolations', 'traversals')
TRAVERSAL_SD = np.linspace(-3.0, 3.0, 7)  # Offsets in standard deviations; 0 = the image's code.
COLUMNS = 8


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
  """Linear interpolation between two codes, both ends included.

  Args:
    z0, z1: float [latent_dim] codes.
    steps: number of points, >= 2.
  Returns:
    float32 [steps, latent_dim]; row 0 is z0, row steps-1 is z1, row i is
    z0 + (i / (steps - 1)) * (z1 - z0).
  """
  if steps < 2:
    raise ValueError(f'steps must be >= 2, got {steps}')
  z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
  t = np.linspace(0.0, 1.0, steps)[:, None]
  out = (1.0 - t) * z0[None] + t * z1[None]  # Exact at both ends (t = 0 and t = 1).
  return out.astype(np.float32)


def traversal_codes(z: np.ndarray, dim: int, values: Sequence[float]) -> np.ndarray:
  """Copies of one code with dimension `dim` set to each of `values`, the others unchanged.

  Args:
    z: float [latent_dim] code.
    dim: index of the dimension to vary.
    values: the values (in code units) that dimension takes, one per row.
  Returns:
    float32 [len(values), latent_dim].
  """
  z = np.asarray(z, np.float32)
  out = np.repeat(z[None], len(values), axis=0)
  out[:, dim] = np.asarray(values, np.float32)
  return out


def kl_per_dim(mean: np.ndarray, logvar: np.ndarray) -> np.ndarray:
  """Average over examples of KL(N(mean, exp(logvar)) || N(0, 1)) for each latent dimension.

  Args:
    mean, logvar: float [n, latent_dim] diagonal Gaussian posteriors.
  Returns:
    float64 [latent_dim], nats per image; their sum is the average KL term of the ELBO.
  """
  mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  return np.mean(0.5 * (np.square(mean) + np.exp(logvar) - 1.0 - logvar), axis=0)


def top_kl_dims(mean: np.ndarray, logvar: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """The `k` latent dimensions with the largest average KL to the N(0, 1) prior.

  Args:
    mean, logvar: float [n, latent_dim] posterior means and log-variances.
    k: how many (at most latent_dim are returned).
  Returns:
    (dims int64 [k], kl float64 [k] in nats per image), largest KL first (ties: lower index).
  """
  kl = kl_per_dim(mean, logvar)
  dims = np.argsort(-kl, kind='stable')[:k]
  return dims.astype(np.int64), kl[dims]


def top_variance_dims(codes: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """The `k` code dimensions with the largest variance over examples (for AEs, with no prior).

  Args:
    codes: float [n, latent_dim].
  Returns:
    (dims int64 [k], variance float64 [k] in squared code units), largest first.
  """
  var = np.var(np.asarray(codes, np.float64), axis=0)
  dims = np.argsort(-var, kind='stable')[:k]
  return dims.astype(np.int64), var[dims]


def _alternating_rows(top: np.ndarray, bottom: np.ndarray, cols: int) -> np.ndarray:
  rows = []
  for start in range(0, len(top), cols):
    rows += [top[start:start + cols], bottom[start:start + cols]]
  return np.concatenate(rows)


def _check_args(num: int, pairs: int, steps: int, dims: int, pictures: Sequence[str]) -> List[str]:
  for name, value, low in (('num', num, 1), ('pairs', pairs, 1), ('steps', steps, 2),
                           ('dims', dims, 1)):
    if value < low:
      raise UserInputError(f'--{name} must be >= {low}, got {value}')
  unknown = [p for p in pictures if p not in PICTURES + ('all',)]
  if unknown or not pictures:
    raise UserInputError(f'--pictures: unknown {",".join(unknown) or "(empty)"}; known: '
                         f'{", ".join(PICTURES)}, all')
  return list(PICTURES) if 'all' in pictures else [p for p in PICTURES if p in pictures]


def _traversal_dims(lm, test, dims: int):
  """The dimensions to traverse and their scales: (dims int64 [<= dims], scale float [latent],
  the JSON fields that report them). VAE: largest average KL, scale the prior's sd 1; AE: largest
  variance over the test codes, scale their sd."""
  fields = {}
  if lm.is_vae:
    kl = kl_per_dim(test.mean, test.logvar)
    top, top_score = top_kl_dims(test.mean, test.logvar, dims)
    scale = np.ones(lm.latent_dim)  # Prior standard deviations.
    fields['kl_per_dim_nats'] = [round(float(v), 5) for v in kl]
    fields['kl_total_nats'] = float(kl.sum())
    score_name = 'kl_nats'
  else:
    top, top_score = top_variance_dims(test.mean, dims)
    scale = np.std(test.mean.astype(np.float64), axis=0)
    score_name = 'variance'
  fields['traversal'] = {'dims': top.tolist(), score_name: [float(v) for v in top_score],
                         'offsets_sd': TRAVERSAL_SD.tolist(),
                         'scale': [float(scale[d]) for d in top]}
  return top, scale, fields


def _wanted_pictures(lm, pictures: Sequence[str], wanted: List[str], seed: int) -> Dict[str, str]:
  """Drops 'samples' from `wanted` for a model without a prior; returns {picture: why skipped}.

  Raises:
    UserInputError: samples asked for by name from a non-VAE.
  """
  import jax
  if 'samples' not in wanted or lm.is_vae:
    return {}
  if 'all' not in pictures:
    lm.sample(jax.random.PRNGKey(seed), 1)  # Raises the one-line error.
  wanted.remove('samples')
  return {'samples': f'{lm.run.config.model.name} has no prior to sample from'}


def generate(workdir: str, output: Optional[str] = None, num: int = 64, seed: int = 0,
             pictures: Sequence[str] = ('all',), pairs: int = 8, steps: int = 10,
             dims: int = 8, checkpoint: str = 'latest') -> Dict:
  """Writes the pictures and generate.json (see the module docstring); returns the JSON dict.

  Raises:
    UserInputError: bad argument, an `output` generate did not write or cannot write (checked
      first), not a workdir / no checkpoint, not an autoencoder, or samples asked for explicitly
      from a non-VAE; an OSError of the writing (one line, `output` left as it was).
  """
  from segae_jax.tools import latents

  wanted = _check_args(num, pairs, steps, dims, pictures)
  # Results of an earlier version at the default place are known by their generate.json.
  legacy = None if output else 'generate.json'
  output = output or os.path.join(workdir, 'generate')
  outputs.check_folder(output, 'generate', legacy)
  run = common.load_run(workdir, checkpoint)
  lm = latents.LatentModel(run)
  skipped = _wanted_pictures(lm, pictures, wanted, seed)
  header = {**common.result_header(workdir, run), 'output': os.path.abspath(output),
            'skipped': skipped}
  with outputs.staged_folder(output, 'generate', legacy) as staging:
    return _write_pictures(lm, staging, header, num, seed, wanted, pairs, steps, dims)


def _write_pictures(lm, staging: str, header: Dict, num: int, seed: int, wanted: List[str],
                    pairs: int, steps: int, dims: int) -> Dict:
  """generate()'s pictures and generate.json (`header`'s fields first) written into `staging`,
  the folder that becomes the output; returns the JSON dict."""
  import jax
  from segae_jax import data
  from segae_jax.training import writers
  config = lm.run.config
  dataset = data.build(config.data)
  rng = np.random.default_rng([seed, 0x6E4])

  # Statistics of the codes over the whole test split (same inputs as train.evaluate's).
  test = lm.encode_split(dataset.test, dataset.preprocess, config.eval_batch_size, config.seed)
  num_indices = max(num, 2 * pairs, 1)
  indices = rng.choice(len(dataset.test), size=min(num_indices, len(dataset.test)), replace=False)
  inputs, images = lm.read_examples(dataset.test, dataset.preprocess, indices, seed)
  codes, _ = lm.encode(inputs)
  results = {**header, 'latent_dim': lm.latent_dim, 'seed': seed,
             'test_indices': indices.tolist(), 'files': {}}

  def save(name: str, tiles: np.ndarray, cols: int, **info) -> None:
    grid = writers.image_grid(tiles, cols)
    writers.save_png(os.path.join(staging, f'{name}.png'), grid)
    results['files'][f'{name}.png'] = {'shape': list(grid.shape), **info}

  if 'samples' in wanted:
    save('samples', lm.sample(jax.random.PRNGKey(seed), num), min(num, COLUMNS), count=num,
         prior='N(0, I)')
  if 'reconstructions' in wanted:
    n = min(num, len(indices))
    recon = lm.decode(codes[:n])
    save('reconstructions', _alternating_rows(images[:n], recon, COLUMNS), min(n, COLUMNS),
         count=n, test_indices=indices[:n].tolist())
  if 'interpolations' in wanted:
    n = min(pairs, len(indices) // 2)
    rows = []
    for p in range(n):
      a, b = 2 * p, 2 * p + 1
      line = lm.decode(interpolate(codes[a], codes[b], steps))
      rows.append(np.concatenate([images[a:a + 1], line, images[b:b + 1]]))
    save('interpolations', np.concatenate(rows), steps + 2, pairs=n, steps=steps,
         test_index_pairs=[[int(indices[2 * p]), int(indices[2 * p + 1])] for p in range(n)])

  top, scale, fields = _traversal_dims(lm, test, dims)
  results.update(fields)
  results['traversal']['test_index'] = int(indices[0])
  if 'traversals' in wanted:
    rows = []
    for d in top:
      values = codes[0, d] + TRAVERSAL_SD * scale[d]
      rows.append(np.concatenate([images[:1], lm.decode(traversal_codes(codes[0], d, values))]))
    save('traversals', np.concatenate(rows), len(TRAVERSAL_SD) + 1, dims=top.tolist())
  writers.write_json(os.path.join(staging, 'generate.json'), results)
  return results


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results = generate(FLAGS.workdir, FLAGS.output, FLAGS.num, FLAGS.seed, FLAGS.pictures,
                     FLAGS.pairs, FLAGS.steps, FLAGS.dims)
  trav = results['traversal']
  score = 'kl_nats' if 'kl_nats' in trav else 'variance'
  unit = ' nats' if score == 'kl_nats' else ' var'
  dims = ', '.join(f'{d} ({s:.2f}{unit})' for d, s in zip(trav['dims'], trav[score]))
  print(f'{results["model"]} step {results["step"]}: wrote {", ".join(results["files"])} and '
        f'generate.json to {results["output"]}')
  if 'kl_total_nats' in results:
    print(f'test KL {results["kl_total_nats"]:.2f} nats over {results["latent_dim"]} dims')
  print(f'traversed dims: {dims}')
  for name, why in results['skipped'].items():
    print(f'skipped {name}: {why}')


def run() -> None:
  """The installed command segae-generate (also python -m segae_jax.tools.generate)."""
  cli.run_command(main, define_flags, ['workdir'])


if __name__ == '__main__':
  run()
