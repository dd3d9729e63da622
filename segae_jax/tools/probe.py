"""How much the learned code helps classification with few labels:
  python -m segae_jax.tools.probe --workdir=DIR --config=configs/probe_fashion_mnist.py \
      [--config.<key>=<value>] [--output=DIR/probe]

Restores the latest checkpoint of an `ae`, `sparse_ae` or `vae` run trained on Fashion-MNIST and,
for each fraction in config.label_fractions, trains three classifiers with optax on the same
labeled subset:
  linear    softmax regression on the frozen codes (the posterior mean for a VAE), computed once
            and standardised per dimension with the labeled subset's mean and sd;
  finetune  EncoderClassifier (the run's encoder + a linear head on its code) trained end to end,
            its encoder starting from the run's encoder parameters;
  scratch   the same network and head initialisation, encoder randomly initialised (baseline).

Data. The validation split (config.validation_size images) is carved from the train split first,
by a permutation seeded from config.seed; the rest is the labeled pool. Each labeled subset is
class-stratified: from each class c of the pool, round(fraction * n_c) images (at least 1), the
first ones of a per-class permutation seeded from (config.seed, c), so the subsets of a seed are
deterministic and nested (the 1% subset lies inside the 10% one). config.imbalance then keeps only
max(1, round(ratio * m_c)) of the m_c labeled images of each minority class (again a prefix).
Encoder inputs are the run's own preprocessing (binarised once, from a seeded generator, when the
run trained on binarised images), the same arrays for the three methods and every fraction.

Training: Adam (AdamW when config.weight_decay > 0) from segae_jax.training.optimizers' registry,
constant learning rate, minibatches of min(batch_size, labeled) drawn from a seeded reshuffle
every epoch, dropout on the head's input, validation accuracy every config.eval_every steps; the
best parameters (first highest accuracy) are kept and training stops after config.patience
evaluations without a strict improvement, or at config.num_steps. Loss: 'ce', 'weighted_ce' or
'focal', the registered terms class_ce and class_focal of segae_jax.losses (see
`classification_loss_fn`). The classifiers are segae_jax.models.heads' LinearHead and
EncoderClassifier.

Generated data (config.generated.per_image > 0): every labeled image is encoded and
`per_image` codes are drawn near its code, z = mean + noise_scale * spread * eps with eps ~ N(0, I)
(spread: the VAE's posterior standard deviation of that image; for an AE or sparse AE, the
standard deviation of the codes of the labeled images of its class, per dimension). Each code is
decoded (Bernoulli means), binarised with a seeded draw when the run trained on binarised images,
and joins the labeled set with the class label of its source image, for all three methods. The
validation and test images are never generated.

Writes <output>/probe.json (the config, and per method and fraction: test accuracy on the 10,000
test images, per-class recall, best and stopping step, labeled images per class, train time) and
prints a Markdown table. The folder is written beside its place and renamed into it
(tools.outputs), with a marker (.segae_output.json) naming this tool: an existing one is replaced
only when it is a previous probe output (or empty; at the default place, one holding probe.json
from before markers); anything else is refused before any training.
"""
import os
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from segae_jax import cli, losses, models
from segae_jax.data import batching
from segae_jax.errors import UserInputError
from segae_jax.models.heads import EncoderClassifier, LinearHead
from segae_jax.tools import common, outputs

FLAGS = flags.FLAGS

METHODS = ('linear', 'finetune', 'scratch')
LOSS_KINDS = ('ce', 'weighted_ce', 'focal')
SAMPLING = ('class-stratified: from each class c of the pool (train split minus validation), '
            'round(fraction * n_c) images (at least 1), a prefix of a per-class permutation '
            'seeded from (seed, c), so subsets are nested across fractions; minority classes then '
            'keep a prefix of max(1, round(ratio * m_c)) of their m_c labeled images')


def define_flags() -> None:
  """The command-line flags; defined only when run as a program, so the module imports as a
  library next to other commands that define the same names."""
  from ml_collections import config_flags
  flags.DEFINE_string('workdir', None, 'Training workdir of an ae, sparse_ae or vae run.')
  config_flags.DEFINE_config_file('config', None, 'Probe config (configs/probe_fashion_mnist.py).',
                                  lock_config=True)
  flags.DEFINE_string('output', None, 'Folder for probe.json (default <workdir>/probe): a new or '
                      'empty folder, or a previous probe output, which is replaced.')


# ----------------------------------------------------------------------------- config


def _generated(config):
  """config.generated, or 'off' for a probe config written before the option existed."""
  return config.get('generated', {'per_image': 0, 'noise_scale': 1.0})


def validate(config, num_classes: int = 10) -> None:
  """Raises UserInputError naming the first bad field of a probe config."""
  methods = tuple(config.methods)
  unknown = [m for m in methods if m not in METHODS]
  if not methods or unknown:
    raise UserInputError(f'config.methods: unknown {", ".join(map(str, unknown)) or "(empty)"}; '
                         f'known: {", ".join(METHODS)}')
  if len(set(methods)) != len(methods):
    raise UserInputError(f'config.methods lists a method twice: {methods}')
  fractions = tuple(config.label_fractions)
  if not fractions:
    raise UserInputError('config.label_fractions is empty')
  for f in fractions:
    if not 0.0 < float(f) <= 1.0:
      raise UserInputError(f'config.label_fractions must each be in (0, 1], got {f}')
  for name in ('num_steps', 'batch_size', 'eval_every', 'patience', 'validation_size',
               'eval_batch_size'):
    if int(config[name]) < 1:
      raise UserInputError(f'config.{name} must be >= 1, got {config[name]}')
  for name in ('learning_rate', 'linear_learning_rate'):
    if not float(config[name]) > 0.0:
      raise UserInputError(f'config.{name} must be > 0, got {config[name]}')
  if not float(config.weight_decay) >= 0.0:
    raise UserInputError(f'config.weight_decay must be >= 0, got {config.weight_decay}')
  if not 0.0 <= float(config.dropout) < 1.0:
    raise UserInputError(f'config.dropout must be in [0, 1), got {config.dropout}')
  if config.loss not in LOSS_KINDS:
    raise UserInputError(f'config.loss: unknown {config.loss!r}; known: {", ".join(LOSS_KINDS)}')
  if not float(config.focal_gamma) >= 0.0:
    raise UserInputError(f'config.focal_gamma must be >= 0, got {config.focal_gamma}')
  generated = _generated(config)
  if int(generated['per_image']) < 0:
    raise UserInputError(f'config.generated.per_image must be >= 0 (0 = off), got '
                         f'{generated["per_image"]}')
  if not float(generated['noise_scale']) >= 0.0:
    raise UserInputError(f'config.generated.noise_scale must be >= 0, got '
                         f'{generated["noise_scale"]}')
  ratio = float(config.imbalance.ratio)
  if not 0.0 < ratio <= 1.0:
    raise UserInputError(f'config.imbalance.ratio must be in (0, 1] (1 = off), got {ratio}')
  for c in config.imbalance.minority_classes:
    if not (isinstance(c, (int, np.integer)) and 0 <= c < num_classes):
      raise UserInputError(f'config.imbalance.minority_classes: {c!r} is not a class id in '
                           f'[0, {num_classes})')


# ----------------------------------------------------------------------------- data


def split_validation(num_train: int, validation_size: int, seed: int
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Carves the validation split from the train split before any labeled subset is drawn.

  Args:
    num_train: images in the train split.
    validation_size: images held out, 1 <= validation_size < num_train.
    seed: seeds the permutation.
  Returns:
    (validation indices, pool indices), int64, each sorted; disjoint, together all of
    range(num_train).
  Raises:
    UserInputError: validation_size leaves no pool.
  """
  if not 1 <= validation_size < num_train:
    raise UserInputError(f'config.validation_size must be in [1, {num_train}) for a train split '
                         f'of {num_train} images, got {validation_size}')
  perm = np.random.default_rng([seed, 0x7A1]).permutation(num_train)
  return np.sort(perm[:validation_size]), np.sort(perm[validation_size:])


def labeled_subset(labels: np.ndarray, pool: np.ndarray, fraction: float, seed: int,
                    minority_classes: Sequence[int] = (), ratio: float = 1.0) -> np.ndarray:
  """The labeled training images for one label fraction (see the module docstring).

  Args:
    labels: int [num_train] class ids of the whole train split.
    pool: int [p] indices of the train split that may be labeled (not validation).
    fraction: in (0, 1]; each class c of the pool contributes max(1, round(fraction * n_c)).
    seed: seeds one permutation per class (shared by all fractions: subsets are nested).
    minority_classes: class ids subsampled to `ratio`: max(1, round(ratio * m_c)) kept of m_c.
    ratio: in (0, 1]; 1 keeps every labeled image.
  Returns:
    int64 [n] sorted indices into the train split.
  """
  labels = np.asarray(labels)
  pool = np.asarray(pool)
  chosen = []
  for c in np.unique(labels[pool]):
    members = np.sort(pool[labels[pool] == c])
    order = members[np.random.default_rng([seed, 0xC1A55, int(c)]).permutation(len(members))]
    count = max(1, int(round(fraction * len(members))))
    if int(c) in {int(m) for m in minority_classes} and ratio < 1.0:
      count = max(1, int(round(ratio * count)))
    chosen.append(order[:count])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Weights inversely proportional to the labeled class frequency, normalised to mean 1.

  w_c = (1 / n_c) / mean_k(1 / n_k) over the classes present (n_k > 0); absent classes get 0.
  A balanced set gives all ones.

  Args:
    labels: int [n] labels of the labeled training images.
  Returns:
    float32 [num_classes].
  """
  counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
  present = counts > 0
  inverse = np.where(present, 1.0 / np.maximum(counts, 1.0), 0.0)
  return (inverse / inverse[present].mean()).astype(np.float32)


def code_spread(mean: np.ndarray, logvar: Optional[np.ndarray], labels: np.ndarray) -> np.ndarray:
  """How far generated codes stray from each labeled image's code, per dimension.

  Args:
    mean: float [n, latent_dim] codes (VAE: posterior means); labels: int [n] their classes.
    logvar: float [n, latent_dim] VAE posterior log-variances, or None (AE / sparse AE).
  Returns:
    float64 [n, latent_dim]: exp(logvar / 2), the posterior standard deviation, for a VAE; else
    row i holds the standard deviation (ddof 0) over the codes of the images of class labels[i]
    (0 for a class of one image).
  """
  mean = np.asarray(mean, np.float64)
  if logvar is not None:
    return np.exp(0.5 * np.asarray(logvar, np.float64))
  labels = np.asarray(labels)
  spread = np.zeros_like(mean)
  for c in np.unique(labels):
    members = labels == c
    spread[members] = mean[members].std(0)
  return spread


def codes_near(mean: np.ndarray, spread: np.ndarray, per_image: int, noise_scale: float,
               rng: np.random.Generator) -> np.ndarray:
  """z = mean_i + noise_scale * spread_i * eps, eps ~ N(0, I), `per_image` draws per row i.

  Args:
    mean, spread: float [n, latent_dim] (see code_spread).
  Returns:
    float32 [n * per_image, latent_dim]; rows i * per_image ... (i + 1) * per_image - 1 are
    drawn around mean[i].
  """
  mean, spread = np.asarray(mean, np.float64), np.asarray(spread, np.float64)
  eps = rng.standard_normal((len(mean), per_image, mean.shape[1]))
  z = mean[:, None] + noise_scale * spread[:, None] * eps
  return z.reshape(-1, mean.shape[1]).astype(np.float32)


def generate_near_codes(lm, x: np.ndarray, y: np.ndarray, per_image: int, noise_scale: float,
                        seed: int, binarize: bool,
                        batch_size: int = 1000) -> Tuple[np.ndarray, np.ndarray]:
  """Class-conditional generated images: decoded codes drawn near the codes of labeled images
  (codes_near with code_spread), labeled with their source image's class.

  Args:
    lm: latents.LatentModel of the trained run.
    x: float32 [n, h, w, c] encoder inputs in [0, 1]; y: int [n] their class labels.
    per_image: draws per labeled image (>= 1).
    noise_scale: multiplies the spread (>= 0); 0 gives per_image copies of each reconstruction.
    seed: seeds eps and the binarisation draw.
    binarize: draw Bernoulli pixels from the decoded means (the run trained on binarised inputs,
      so its encoder and classifiers see binary images).
  Returns:
    (images float32 [n * per_image, h, w, c] in [0, 1], labels int32 [n * per_image]); rows
    i * per_image ... (i + 1) * per_image - 1 come from image i.
  """
  x, y = np.asarray(x, np.float32), np.asarray(y)
  encoded = [lm.encode(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
  mean = np.concatenate([m for m, _ in encoded])
  logvar = None if encoded[0][1] is None else np.concatenate([v for _, v in encoded])
  rng = np.random.default_rng([seed, 0x6E4])
  z = codes_near(mean, code_spread(mean, logvar, y), per_image, noise_scale, rng)
  images = lm.decode(z, batch_size)
  if binarize:
    images = (rng.random(images.shape) < images).astype(np.float32)
  return images.astype(np.float32), np.repeat(y, per_image).astype(np.int32)


# ----------------------------------------------------------------------------- losses


def classification_loss_fn(kind: str, weights=None, gamma: float = 2.0) -> losses.LossFn:
  """config.loss as registered terms (segae_jax.losses.classification) composed by make_loss_fn:
  (outputs {'class_logits': float [batch, classes]}, batch {'label': int [batch]}) ->
  (mean over the batch in nats, metrics).

  'ce': class_ce; 'weighted_ce': class_ce with class_weights = weights (class_weights: mean 1
  over classes) averaged over the examples (reduction 'mean'); 'focal': class_focal with gamma.

  Args:
    weights: float [classes] ('weighted_ce').
  Raises:
    UserInputError: unknown kind.
  """
  if kind not in LOSS_KINDS:
    raise UserInputError(f'config.loss: unknown {kind!r}; known: {", ".join(LOSS_KINDS)}')
  term, params = {'ce': ('class_ce', {}),
                  'weighted_ce': ('class_ce', {'class_weights': weights, 'reduction': 'mean'}),
                  'focal': ('class_focal', {'gamma': gamma})}[kind]
  return losses.make_loss_fn({term: 1.0}, {term: params})


def classification_loss(logits: jnp.ndarray, labels: jnp.ndarray, kind: str,
                        weights: Optional[jnp.ndarray] = None, gamma: float = 2.0) -> jnp.ndarray:
  """The training loss of logits float [batch, classes] against labels int [batch], a mean over
  the batch in nats (see classification_loss_fn).

  Raises:
    UserInputError: unknown kind.
  """
  value, _ = classification_loss_fn(kind, weights, gamma)({'class_logits': logits},
                                                          {'label': labels})
  return value


# ----------------------------------------------------------------------------- early stopping


def early_stopping(accuracies: Sequence[float], patience: int) -> Tuple[int, bool]:
  """Early-stopping decision after the latest of a series of validation evaluations.

  Args:
    accuracies: validation accuracy at each evaluation so far, in order (at least one).
    patience: evaluations without a strict improvement over the best that end training.
  Returns:
    (index of the best evaluation: the first one reaching the maximum, stop now?); stop is true
    when the last `patience` evaluations all came after the best one.
  """
  accuracies = list(accuracies)
  best = int(np.argmax(accuracies))  # np.argmax returns the first maximum: ties do not improve.
  return best, len(accuracies) - 1 - best >= patience


# ----------------------------------------------------------------------------- models


def encoder_classifier_for(run, num_classes: int, dropout: float) -> EncoderClassifier:
  """An EncoderClassifier shaped like the restored run's encoder (common.TrainedRun)."""
  model = run.model
  return EncoderClassifier(
      features=tuple(model.features), hidden_dim=int(model.hidden_dim),
      encoder_outputs=int(model.encoder_outputs()), latent_dim=int(model.latent_dim),
      num_classes=num_classes, activation=model.activation,
      code_activation=(model.code_activation if isinstance(model, models.SparseAutoencoder)
                       else 'linear'),
      dropout=dropout)


def init_params(classifier: EncoderClassifier, image_shape, seed: int,
                encoder_params=None) -> Dict:
  """Initial parameters {'encoder', 'classifier'}: random from `seed`, then the encoder's
  replaced by `encoder_params` (a trained run's params['encoder']) when given.

  Raises:
    ValueError: encoder_params does not have the encoder's tree or shapes.
  """
  # Folded: PRNGKey(seed) alone would give the encoder the very initialisation an AE trained
  # from that seed may have started at (same submodule path), not an independent baseline.
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x5C7A)
  params = classifier.init(key, jnp.zeros((1, *image_shape), jnp.float32))
  params = dict(jax.tree_util.tree_map(lambda a: a, params['params']))
  if encoder_params is not None:
    expected = jax.tree_util.tree_map(jnp.shape, params['encoder'])
    given = jax.tree_util.tree_map(jnp.shape, dict(encoder_params))
    if jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(given) or \
        jax.tree_util.tree_leaves(expected) != jax.tree_util.tree_leaves(given):
      raise ValueError(f'encoder parameters do not fit the classifier: {given} vs {expected}')
    params['encoder'] = jax.tree_util.tree_map(jnp.asarray, dict(encoder_params))
  return params


# ----------------------------------------------------------------------------- training


def standardizer(codes: np.ndarray):
  """z -> (z - mean) / max(sd, 1e-6) per dimension, the statistics of `codes` (float [n, d],
  the labeled training codes), so one learning rate suits codes of any scale."""
  codes = np.asarray(codes, np.float64)
  mean, sd = codes.mean(0), np.maximum(codes.std(0), 1e-6)
  return lambda z: ((np.asarray(z, np.float64) - mean) / sd).astype(np.float32)


def per_class_recall(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> List[Optional[float]]:
  """Recall of each class: correct predictions among its examples (None if it has none)."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  out = []
  for c in range(num_classes):
    members = labels == c
    out.append(float(np.mean(predictions[members] == c)) if members.any() else None)
  return out


def _classifier_step(apply_fn, tx, loss_terms):
  """The jitted optimizer step (params, opt_state, inputs, labels, dropout key) -> (params,
  opt_state, loss) of train_classifier."""

  @jax.jit
  def step_fn(params, opt_state, xb, yb, key):
    def loss_fn(p):
      logits = apply_fn({'params': p}, xb, True, rngs={'dropout': key})
      return loss_terms({'class_logits': logits}, {'label': yb})[0]
    value, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  return step_fn


def train_classifier(apply_fn, params, x: np.ndarray, y: np.ndarray, x_val: np.ndarray,
                     y_val: np.ndarray, *, num_steps: int, batch_size: int, learning_rate: float,
                     weight_decay: float, eval_every: int, patience: int, loss: str,
                     weights: np.ndarray, gamma: float, seed: int,
                     eval_batch_size: int = 1000, optimizer: str = '') -> Dict:
  """Trains `params` of `apply_fn(variables, x, train, rngs=...) -> logits` with early stopping.

  Args:
    x, y: labeled inputs (codes or images) and int labels; x_val, y_val: the validation split.
    learning_rate: constant; weight_decay: AdamW's decoupled weight decay.
    loss, weights, gamma: classification_loss_fn's kind, class weights float [classes] and gamma.
    optimizer: a name in segae_jax.training.optimizers.OPTIMIZERS; '' = 'adamw' when
      weight_decay > 0, else 'adam' (each with optax's default betas).
  Returns:
    {'params': the best parameters, 'best_step', 'stop_step' (last step trained),
     'val_accuracy' (at best_step), 'history': [[step, validation accuracy], ...],
     'early_stopped': bool, 'predict': jitted (params, inputs) -> int class ids [batch]}.
  Raises:
    UserInputError: an unknown optimizer or loss.
  """
  # Imported here: segae_jax.training loads the whole training system (the loop, orbax).
  from segae_jax.training import optimizers  # pylint: disable=import-outside-toplevel
  name = optimizer or ('adamw' if weight_decay > 0 else 'adam')
  tx = optimizers.OPTIMIZERS.get(name)(learning_rate, {'weight_decay': weight_decay})
  step_fn = _classifier_step(apply_fn, tx, classification_loss_fn(loss, jnp.asarray(weights),
                                                                   gamma))
  predict = jax.jit(lambda p, xb: jnp.argmax(apply_fn({'params': p}, xb, False), -1))
  opt_state = tx.init(params)
  n = len(x)
  size = min(batch_size, n)
  per_epoch = n // size
  key = jax.random.PRNGKey(seed)
  history, accuracies = [], []
  best_params, best_step, step = params, 0, 0
  stopped = False
  perm = None
  while step < num_steps:
    epoch, b = divmod(step, per_epoch)
    if b == 0 or perm is None:
      perm = np.random.default_rng([seed, 0xBA7C4, epoch]).permutation(n)
    idx = perm[b * size:(b + 1) * size]
    params, opt_state, _ = step_fn(params, opt_state, x[idx], y[idx], jax.random.fold_in(key, step))
    step += 1
    if step % eval_every == 0 or step == num_steps:
      accuracy = float(np.mean(
          batching.map_batched(lambda xb: predict(params, xb), x_val, eval_batch_size) == y_val))
      history.append([step, accuracy])
      accuracies.append(accuracy)
      best, stop = early_stopping(accuracies, patience)
      if best == len(accuracies) - 1:
        best_params, best_step = params, step
      if stop:
        stopped = True
        break
  return {'params': best_params, 'best_step': best_step, 'stop_step': step,
          'val_accuracy': accuracies[best] if accuracies else None, 'history': history,
          'early_stopped': stopped, 'predict': predict}


# ----------------------------------------------------------------------------- the command


def _read_split(source, preprocess, seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Encoder inputs float32 [n, h, w, c] (the run's preprocessing, one seeded draw) and labels."""
  from segae_jax import data
  examples = data.stack_examples(source.__getitems__(list(range(len(source)))))
  if 'label' not in examples:
    raise UserInputError('the run\'s dataset has no image labels (feature "label"); the probe '
                         'needs a classification dataset such as fashion_mnist')
  labels = np.asarray(examples['label']).astype(np.int32)
  batch = preprocess({'image': examples['image']}, data.eval_rngs(seed, range(len(labels))))
  return np.asarray(batch['image'], np.float32), labels


class _Splits(NamedTuple):
  """The probe's data: encoder inputs float32 [n, h, w, c] and int32 labels [n] of the train and
  test splits, the validation indices and the labeled pool (int64, into the train split), and
  the frozen codes {'train', 'test'} float32 [n, latent_dim] (only for the 'linear' method)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  val_idx: np.ndarray
  pool: np.ndarray
  codes: Dict[str, np.ndarray]


def _read_splits(lm, dataset, config, timing: Dict) -> _Splits:
  """Reads both splits, carves the validation split and encodes once for the linear probe."""
  seed = int(config.seed)
  x_train, y_train = _read_split(dataset.train, dataset.preprocess, seed)
  x_test, y_test = _read_split(dataset.test, dataset.preprocess, seed + 1)
  val_idx, pool = split_validation(len(y_train), int(config.validation_size), seed)
  codes = {}
  if 'linear' in config.methods:
    start = time.perf_counter()
    codes = {'train': batching.map_batched(_encoder(lm), x_train, config.eval_batch_size),
             'test': batching.map_batched(_encoder(lm), x_test, config.eval_batch_size)}
    timing['encode_s'] = round(time.perf_counter() - start, 2)
  return _Splits(x_train, y_train, x_test, y_test, val_idx, pool, codes)


def _encoder(lm):
  """images float32 [n, h, w, c] -> codes [n, latent_dim] (means for a VAE)."""
  return lambda chunk: lm.encode(chunk)[0]


def _train_method(method: str, run, lm, splits: _Splits, subset: np.ndarray, x_lab: np.ndarray,
                  y_lab: np.ndarray, x_gen: np.ndarray, config, num_classes: int,
                  settings: Dict) -> Tuple[Dict, np.ndarray]:
  """Trains one method's classifier on (x_lab, y_lab): the labeled subset of the train split
  (indices `subset`) followed by its generated images x_gen.

  Returns:
    (train_classifier's result, the test inputs its predict takes).
  """
  seed, eval_batch_size = int(config.seed), int(config.eval_batch_size)
  x_val, y_val = splits.x_train[splits.val_idx], splits.y_train[splits.val_idx]
  if method == 'linear':
    codes = splits.codes
    lab_codes = codes['train'][subset]
    if len(x_gen):
      lab_codes = np.concatenate([lab_codes, batching.map_batched(_encoder(lm), x_gen,
                                                                  eval_batch_size)])
    scale = standardizer(lab_codes)
    head = LinearHead(num_classes, float(config.dropout))
    params = head.init(jax.random.PRNGKey(seed), codes['train'][:1])['params']
    out = train_classifier(head.apply, params, scale(lab_codes), y_lab,
                           scale(codes['train'][splits.val_idx]), y_val,
                           learning_rate=float(config.linear_learning_rate), **settings)
    return out, scale(codes['test'])
  classifier = encoder_classifier_for(run, num_classes, float(config.dropout))
  params = init_params(classifier, run.image_shape, seed,
                       run.variables['params']['encoder'] if method == 'finetune' else None)
  out = train_classifier(classifier.apply, params, x_lab, y_lab, x_val, y_val,
                         learning_rate=float(config.learning_rate), **settings)
  return out, splits.x_test


def _labeled_set(lm, run, splits: _Splits, subset: np.ndarray, fraction: float, config,
                 timing: Dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x_lab, y_lab, x_gen): the labeled images of `subset`, then the images generated near their
  codes (config.generated; none when per_image is 0), with their source images' labels."""
  x_lab, y_lab = splits.x_train[subset], splits.y_train[subset]
  x_gen = np.zeros((0,) + splits.x_train.shape[1:], np.float32)
  generated = _generated(config)
  if int(generated['per_image']) > 0:
    start = time.perf_counter()
    x_gen, y_gen = generate_near_codes(lm, x_lab, y_lab, int(generated['per_image']),
                                       float(generated['noise_scale']), int(config.seed),
                                       bool(run.config.data.get('binarize', False)),
                                       int(config.eval_batch_size))
    timing[f'generate_s_{fraction:g}'] = round(time.perf_counter() - start, 2)
    x_lab, y_lab = np.concatenate([x_lab, x_gen]), np.concatenate([y_lab, y_gen])
  return x_lab, y_lab, x_gen


def _probe_fraction(fraction: float, run, lm, splits: _Splits, config, num_classes: int,
                    timing: Dict) -> List[Dict]:
  """The result rows of every method on one label fraction (printed as they come)."""
  subset = labeled_subset(splits.y_train, splits.pool, fraction, int(config.seed),
                           tuple(int(c) for c in config.imbalance.minority_classes),
                           float(config.imbalance.ratio))
  y_real = splits.y_train[subset]
  x_lab, y_lab, x_gen = _labeled_set(lm, run, splits, subset, fraction, config, timing)
  # Generated images share their sources' class proportions, so the weights of the real
  # labeled images are those of the enlarged set.
  settings = dict(num_steps=int(config.num_steps), batch_size=int(config.batch_size),
                  weight_decay=float(config.weight_decay), eval_every=int(config.eval_every),
                  patience=int(config.patience), loss=config.loss,
                  weights=class_weights(y_real, num_classes), gamma=float(config.focal_gamma),
                  seed=int(config.seed), eval_batch_size=int(config.eval_batch_size))
  rows = []
  for method in config.methods:
    start = time.perf_counter()
    out, test_inputs = _train_method(method, run, lm, splits, subset, x_lab, y_lab, x_gen,
                                     config, num_classes, settings)
    train_time = time.perf_counter() - start
    predictions = batching.map_batched(lambda xb: out['predict'](out['params'], xb), test_inputs,
                                       int(config.eval_batch_size))
    row = {
        'method': method, 'label_fraction': fraction, 'num_labeled': int(len(subset)),
        'labeled_per_class': np.bincount(y_real, minlength=num_classes).tolist(),
        'num_generated': int(len(x_gen)),
        'test_accuracy': float(np.mean(predictions == splits.y_test)),
        'per_class_recall': per_class_recall(splits.y_test, predictions, num_classes),
        'val_accuracy': out['val_accuracy'], 'best_step': out['best_step'],
        'stop_step': out['stop_step'], 'early_stopped': out['early_stopped'],
        'val_history': out['history'], 'train_time_s': round(train_time, 2)}
    rows.append(row)
    print(_row_line(row), flush=True)
  return rows


def probe(workdir: str, config, output: Optional[str] = None) -> Dict:
  """Runs every method on every label fraction; writes probe.json; returns its dict.

  Raises:
    UserInputError: a bad config field, an `output` probe did not write or cannot write
      (checked first), not a workdir / no checkpoint, not an autoencoder, or a dataset without
      labels; an OSError of the writing (one line, `output` left as it was).
  """
  from segae_jax import data
  from segae_jax.tools import latents
  from segae_jax.training import writers

  validate(config)
  # Results of an earlier version at the default place are known by their probe.json.
  legacy = None if output else 'probe.json'
  output = output or os.path.join(workdir, 'probe')
  outputs.check_folder(output, 'probe', legacy)
  run = common.load_run(workdir, 'latest')
  lm = latents.LatentModel(run)
  dataset = data.build(run.config.data)
  num_classes = int(dataset.num_classes)
  validate(config, num_classes)
  timing = {}
  splits = _read_splits(lm, dataset, config, timing)
  rows = []
  for fraction in config.label_fractions:
    rows += _probe_fraction(float(fraction), run, lm, splits, config, num_classes, timing)

  results = {
      'workdir': os.path.abspath(workdir), 'output': os.path.abspath(output), 'step': run.step,
      'checkpoint': run.checkpoint, 'model': run.config.model.name, 'latent_dim': lm.latent_dim,
      'config': config.to_dict(), 'class_names': list(dataset.class_names),
      'sampling': SAMPLING, 'num_train': int(len(splits.y_train)),
      'num_validation': int(len(splits.val_idx)), 'num_pool': int(len(splits.pool)),
      'num_test': int(len(splits.y_test)),
      'inputs': ('the run\'s preprocessing, binarised once from a seeded generator'
                 if run.config.data.get('binarize', False) else 'grayscale in [0, 1]'),
      'timing': timing, 'results': rows}
  with outputs.staged_folder(output, 'probe', legacy) as staging:
    writers.write_json(os.path.join(staging, 'probe.json'), results)
  return results


def _row_line(row: Dict) -> str:
  return (f'{row["method"]:8s} fraction {row["label_fraction"]:g} '
          f'({row["num_labeled"]} labeled): '
          f'test accuracy {row["test_accuracy"]:.4f}, best step {row["best_step"]}, stopped at '
          f'{row["stop_step"]}, {row["train_time_s"]:.1f} s')


def markdown_table(results: Dict) -> str:
  """The results as a Markdown table: one row per method and fraction, recall per class in %."""
  names = [n.split('/')[0] for n in results['class_names']] or \
      [str(c) for c in range(len(results['results'][0]['per_class_recall']))]
  minority = set(results['config']['imbalance']['minority_classes']) \
      if results['config']['imbalance']['ratio'] < 1.0 else set()
  names = [f'{n}*' if c in minority else n for c, n in enumerate(names)]
  head = ['method', 'labels', 'n', 'test acc', 'best / stop step', 'time s'] + names
  rows = []
  for r in results['results']:
    recall = ['-' if v is None else f'{100 * v:.0f}' for v in r['per_class_recall']]
    rows.append([r['method'], f'{100 * r["label_fraction"]:g}%',
                 f'{r["num_labeled"]:,}' + (f' + {r["num_generated"]:,} generated'
                                             if r.get('num_generated') else ''),
                 f'{100 * r["test_accuracy"]:.2f}%', f'{r["best_step"]} / {r["stop_step"]}',
                 f'{r["train_time_s"]:.0f}'] + recall)
  return common.format_table(head, rows, markdown=True)


def main() -> None:
  """The command, once cli.run_command has parsed the flags."""
  results = probe(FLAGS.workdir, FLAGS.config, FLAGS.output)
  print(f'{results["model"]} step {results["step"]}, loss {results["config"]["loss"]}: '
        f'test accuracy (%) and recall per class (%) on {results["num_test"]:,} test images; '
        f'wrote {os.path.join(results["output"], "probe.json")}')
  print(markdown_table(results))


def run() -> None:
  """The installed command segae-probe (also python -m segae_jax.tools.probe)."""
  cli.run_command(main, define_flags, ['workdir', 'config'])


if __name__ == '__main__':
  run()
