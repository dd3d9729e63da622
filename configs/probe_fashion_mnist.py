"""Label-efficiency probe of a trained AE/VAE encoder on Fashion-MNIST classification:
  python -m segae_jax.tools.probe --workdir=runs/default --config=configs/probe_fashion_mnist.py

Not a training config: the workdir holds the trained autoencoder (configs/default.py), this file
sets the classifiers. Override fields with --config.<key>=<value>, e.g.
  --config.label_fractions='(0.01,)' --config.methods="('linear','finetune')" --config.loss=focal
  --config.imbalance.minority_classes='(0,6)' --config.imbalance.ratio=0.1
(tuples are Python literals: quote the strings inside them).
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # linear: softmax regression on the frozen codes (VAE: posterior mean), computed once.
  # finetune: encoder (from the AE's weights) + linear head, trained end to end.
  # scratch: the same network from a random initialisation (the baseline).
  config.methods = ('linear', 'finetune', 'scratch')
  # Fractions of the labeled pool (the train split minus the validation images); each subset is
  # drawn per class (stratified) and the subsets are nested (1% is inside 10%).
  config.label_fractions = (0.01, 0.1, 1.0)
  config.validation_size = 5000     # Carved from the train split before any subset is drawn.

  config.num_steps = 1500           # Upper bound; early stopping usually ends runs sooner.
  config.batch_size = 128
  config.learning_rate = 1e-3       # finetune and scratch (Adam / AdamW).
  config.linear_learning_rate = 1e-2  # The linear probe: codes only, a larger step is stable.
  config.weight_decay = 0.0         # > 0: AdamW with this decoupled weight decay.
  config.dropout = 0.0              # Dropout rate on the head's input (the code) while training.

  # Early stopping: validation accuracy every eval_every steps; the best parameters are kept and
  # training stops after `patience` evaluations without improvement.
  config.eval_every = 100
  config.patience = 4

  # Class imbalance: the labeled images of these classes are subsampled to `ratio` of their
  # number (1.0 = off).
  config.imbalance = ml_collections.ConfigDict({'minority_classes': (0, 6), 'ratio': 1.0})
  # Generated data: per labeled image, `per_image` codes drawn near its code (noise_scale times
  # the VAE posterior's sd; for an AE, its class's code sd), decoded, kept with its label (0 = off).
  config.generated = ml_collections.ConfigDict({'per_image': 0, 'noise_scale': 1.0})
  config.loss = 'ce'                # 'ce', 'weighted_ce' or 'focal'.
  config.focal_gamma = 2.0
  config.eval_batch_size = 1000
  return config
