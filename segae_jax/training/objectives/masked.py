"""'masked_rec': 'supervised' with the pool's images (or, for a model that does not segment,
every image) masked in patches: the model sees x * (1 - m) and the reconstruction terms count the
hidden pixels only (MAE, He et al., CVPR 2022; SimMIM, Xie et al., CVPR 2022)."""
from typing import Sequence

from segae_jax.data import views as views_lib
from segae_jax.errors import UserInputError
from segae_jax.training.objectives.base import OBJECTIVES, Batch, reconstruction_part
from segae_jax.training.objectives.helpers import check_reconstructs
from segae_jax.training.objectives.supervised import Supervised


@OBJECTIVES.register('masked_rec')
class MaskedReconstruction(Supervised):
  """'supervised' with the unlabelled images masked in patches (module doc).

  The model sees x * (1 - m) for a patch mask m of mask_ratio of the patch_size x patch_size
  patches (data.views.PatchMask); the reconstruction terms compare with x on the hidden pixels
  only. A skip-free reconstruction path is required (segae with rec_skips=False, unet_ae,
  vae_unet, ae, vae): nothing then reaches the reconstruction but through the bottleneck, so the
  hidden pixels must be inferred from the visible context rather than interpolated from the
  neighbours a full-resolution skip would carry.
  """
  name = 'masked_rec'
  defaults = {'mask_ratio': 0.6, 'patch_size': 8}

  def check(self) -> None:
    check_reconstructs(self)
    if self.facts.rec_skips:
      raise UserInputError(f'config.objective={self.name!r} needs a reconstruction path without '
                           'skips (the skips would carry the visible neighbours of every hidden '
                           'pixel around the bottleneck): set config.model.rec_skips=False')
    self.patch_mask((0, 0))  # The ratio and patch size (any patch divides an empty image).

  def check_images(self) -> None:
    self.patch_mask(self.facts.image_size)  # And that the patch divides the images.

  @property
  def image_multiple(self) -> int:
    return self.params['patch_size']

  def patch_mask(self, image_size: Sequence[int]) -> views_lib.PatchMask:
    return views_lib.PatchMask(self.params['mask_ratio'], self.params['patch_size'],
                               tuple(image_size))

  def views(self):
    return {reconstruction_part(self.facts): [self.patch_mask(self.facts.image_size)]}

  def unlabeled_input(self, part: Batch) -> Batch:
    image, mask = part['image'], part['mask']
    return {'image': image * (1.0 - mask[..., None]), 'target': image, 'target_weight': mask}
