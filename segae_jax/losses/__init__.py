"""Loss terms as pure functions, registered by name and composed with weights from the config.

Every term has the signature `term(outputs, batch, **params[, axis_name=None]) ->
(scalar, metrics)`:
  outputs: the model's output dict (see segae_jax.models), e.g. 'rec_logits', 'mean', 'logvar', 'z'.
  batch:   dict with 'image' [batch, height, width, channels] float32 in [0, 1] (the model input)
           and optionally 'valid' [batch] float32 (1 = real example, 0 = padding), which every
           term respects; reconstruction terms compare with 'target' when the batch has one (an
           objective changed the input, e.g. masked it; base.reconstruction_target) and weight
           pixels by 'target_weight' [batch, height, width] when given (reconstruction.py).
  axis_name: pmap's axis; a term that takes it is a mean over every device's examples
           (base.axis_mean), so pmap, sharded jit and one device agree.
  returns: a float32 scalar (mean over the real examples) and {term_name: scalar}.

Segmentation terms read batch['segmentation'] (int32 [batch, height, width] class ids, with
`ignore_label` for unlabeled pixels) and outputs['seg_logits'] ([batch, height, width, classes]);
examples with batch['labeled'] == 0 (semi-supervised training) do not count for them.

The layout (which axes are spatial, a value per example broadcast over pixels) comes from the
batch contract, segae_jax.batch.

Units: reconstruction terms are summed over pixels and channels, the KL over latent dimensions,
so per-image values are in nats; segmentation cross-entropy and focal loss are means over labeled
pixels (nats per pixel), Dice loss is in [0, 1].

A config composes terms as `config.loss = {'rec_bce': 1.0, 'kl': beta}`; `make_loss_fn` turns
that into one `(outputs, batch) -> (total, metrics)` function. A new loss is one function
decorated with `@LOSSES.register(name)` in this package (or in any module that is imported), with
no change to the train loop. Terms: reconstruction.py (reconstruction, KL, sparsity),
segmentation.py (seg_ce, focal, dice, balanced_ce), classification.py (class_ce, class_focal),
composed by compose.py; base.py holds the registry and the means they share.
"""
from segae_jax.losses.base import (LOSSES, LossFn, Metrics, axis_mean, batch_mean,
                                   mean_per_example, reconstruction_target, softmax_focal,
                                   sum_per_example, weighted_mean)
from segae_jax.losses.classification import class_ce, class_focal
from segae_jax.losses.compose import alpha_weights, beta_vae_weights, make_loss_fn
from segae_jax.losses.reconstruction import (gaussian_kl, kl, kl_per_pixel, noise_mse,
                                             pixel_weights, rec_bce, rec_mse, rec_mse_per_pixel,
                                             sparsity_kl, sparsity_l1)
from segae_jax.losses.segmentation import (SEGMENTATION_TERMS, balanced_ce, dice, focal,
                                          seg_ce)
