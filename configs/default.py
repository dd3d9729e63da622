"""The main job: a convolutional VAE on real Fashion-MNIST, about 5 minutes on 2 CPU cores.

Every other config imports this one and changes a few fields. Override from the command line:
  python train.py --config=configs/default.py --workdir=runs/x --config.beta=4 --config.batch_size=256
"""
import os

import ml_collections


def default_num_workers() -> int:
  """Input worker processes for this host: half its cores, at most 8, and none below 4 cores,
  where a worker's start-up and hand-over cost more than it decodes (docs/data.md)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return 0 if (cores or 1) < 4 else min(8, cores // 2)


def input_pipeline_fields() -> dict:
  """config.data fields of the input pipeline, for every dataset (configs that replace
  config.data add them back)."""
  # monitor_hidden_masks: a pool made of hidden-mask images keeps them as 'hidden_segmentation',
  # for the pseudo-label methods to report their accuracy per class (no loss reads them).
  return {'cache': 'auto', 'num_workers': default_num_workers(), 'monitor_hidden_masks': False}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'fashion_mnist'
  config.data.idx_dir = ''      # '' = Debian's /usr/share/datasets/fashion-mnist or the fetch cache.
  config.data.tfds_dir = ''     # '' = tfds's default (~/tensorflow_datasets).
  # cache: 'auto' holds a split in memory when it takes at most 256 MiB decoded (Fashion-MNIST:
  # 47 MB), else streams it from disk; 'memory' / 'stream' force either. num_workers: grain
  # processes that read, decode and augment (0 = a thread of the training process); the batches
  # are the same for any value.
  config.data.update(input_pipeline_fields())
  config.data.binarize = True   # Dynamic binarisation: the Bernoulli likelihood is then exact.

  config.model = ml_collections.ConfigDict()
  config.model.name = 'vae'
  config.model.latent_dim = 32
  config.model.features = (32, 64)
  config.model.hidden_dim = 256
  config.model.activation = 'relu'

  # Loss: {registered term: weight}. beta-VAE: L_rec + beta * KL (beta = 1: the ELBO).
  config.beta = 1.0
  config.loss = ml_collections.ConfigDict({'rec_bce': 1.0, 'kl': config.get_ref('beta')})
  config.loss_params = ml_collections.ConfigDict()  # {term: {keyword: value}}.

  config.optimizer = 'adam'
  config.learning_rate = 2e-3
  config.schedule = 'cosine'
  config.warmup_steps = 100
  config.end_lr_factor = 0.05
  config.grad_clip_norm = 0.0   # > 0: clip gradients to this global norm.
  config.weight_decay = 1e-4    # adamw only.
  config.momentum = 0.9         # sgd only.

  config.batch_size = 128       # Global: split over all devices of all processes.
  # < 1: semi-supervised, only this fraction keeps its masks; with data.unlabeled_per_batch > 0
  # the others become an unlabelled pool (as data.unlabeled_dir's images would be).
  config.labeled_fraction = 1.0
  config.labeled_only = False   # True: the images whose masks are hidden are not used at all.
  # The training method (segae_jax/training/objectives/; docs/segmentation.md): 'supervised'
  # (config.loss; with a pool, reconstruction of every image), 'masked_rec', 'denoising',
  # 'supervised_strong', 'fixmatch' (alias 'mean_teacher'); objective_params: its fields (e.g.
  # threshold, ema_decay; objectives.default_params(name) gives them all at their defaults).
  config.objective = 'supervised'
  config.objective_params = ml_collections.ConfigDict()
  # The user's own modules (names, or .py paths), imported before anything is built: there they
  # register objectives, loss terms, models, views and datasets that this config then names
  # (segae_jax.register_objective, ...; segae_jax/plugins.py, docs/api.md).
  config.plugins = ()
  # Pretrain -> fine-tune: start a fresh run from the matching parameters of another run's
  # checkpoint ('latest', 'best' or a step), except those matching an init_dont_load regex.
  config.init_from = ''
  config.init_checkpoint = 'latest'
  config.init_dont_load = ()
  config.num_train_steps = 4000
  config.parallel = 'pmap'      # 'pmap' or 'jit' (batch sharded over a NamedSharding mesh).

  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.eval_batch_size = 1000
  config.checkpoint_every_steps = 1000
  config.max_to_keep = 3
  config.best_metric = ''       # e.g. 'miou': also keep the best checkpoint by this test metric.
  # A NaN/inf loss or gradient: 'stop' (exit 3, that state never checkpointed) or 'skip' the
  # batch (parameters unchanged, counted as train/skipped_steps).
  config.nonfinite = 'stop'
  # Mixed precision: activations, convolutions and matmuls in this dtype; parameters, optimizer
  # state, BatchNorm statistics, losses and metrics stay float32. 'bfloat16' for CPU/TPU,
  # 'float16' for GPU, where the loss is multiplied by loss_scale before differentiation (and the
  # gradients divided by it) so that small gradients do not flush to zero; an overflow then
  # gives a non-finite step, handled by config.nonfinite ('skip' suits float16).
  config.compute_dtype = 'float32'
  config.loss_scale = 128.0     # float16 only; 1024 overflows the VAE's pixel-summed loss.
  # Which convolutions run (segae_jax/models/conv_ops.py; the same results and parameters):
  # 'auto' = oneDNN's on CPU (matmul kernel gradients if its library did not build), XLA's own
  # on GPU/TPU; or 'xla' | 'matmul_grad' | 'onednn'.
  config.conv_impl = 'auto'
  config.num_pictures = 32
  return config
