"""segae_jax.Segmenter: the inference layer's Segmenter (segae_jax/inference/segmenter.py) plus
from_workdir, which restores a training workdir (tools.common.load_run: the checkpoints, the
model, the objective's evaluated variables) and so sits above training and the tools.

  import segae_jax
  segmenter = segae_jax.Segmenter.from_workdir('runs/unet_mine')   # or .from_export('model/')
  labels = segmenter.predict(image)  # uint8 [height, width] class ids of one image
"""
from segae_jax.inference import segmenter


class Segmenter(segmenter.Segmenter):
  """inference.Segmenter (label maps of images of any size at their own size; its arguments
  and from_export are documented there), plus from_workdir."""

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = 'best', batch_size: int = 32,
                   **inference) -> 'Segmenter':
    """The model of a training workdir (its best checkpoint by default, else 'latest'), with
    Inference(**inference) (e.g. tta='hflip', mode='tile').

    Raises:
      UserInputError: not a workdir, no checkpoint, a model that does not segment, a bad
        inference option or tile size.
    """
    from segae_jax.tools import common  # pylint: disable=import-outside-toplevel
    options = segmenter.Inference(**inference)
    run = common.load_run(workdir, checkpoint)
    run.require_segmentation(workdir)
    return run.segmenter(options, batch_size, cls)
