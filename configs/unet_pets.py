"""U-Net on Oxford-IIIT Pet (tfds's stock oxford_iiit_pet, 3,680 train / 3,669 test photos of 37
breeds) as 3-class segmentation of the hand-drawn trimaps: 0 = background, 1 = pet, 2 = border.
Photos are resized to 64x64 (image bilinear, mask nearest) as they are read. Preparing the dataset
once needs TensorFlow and internet access (see segae_jax/data/pets.py); training reads it without.
"""
import ml_collections

from configs import default, unet_scenes


def pets_data() -> ml_collections.ConfigDict:
  """The pets dataset; 3 colour channels come from the dataset, not the config."""
  return ml_collections.ConfigDict({
      'name': 'oxford_iiit_pet',
      'tfds_dir': '',            # '' = tfds's default (~/tensorflow_datasets).
      'image_size': (64, 64),    # (height, width).
      'download': True,          # Prepare on first use (TensorFlow + internet, once).
      # Photos, unlike the scenes, vary in framing and lighting: crops and photometric jitter.
      'augment': {'flip': True, 'crop_min_scale': 0.5, 'brightness': 0.1, 'contrast': 0.1},
      # 'auto' holds the decoded 64x64 splits (60 MB each) after one pass over the JPEGs.
      **default.input_pipeline_fields(),
  })


def get_config():
  config = unet_scenes.get_config()
  config.data = pets_data()
  config.loss = ml_collections.ConfigDict({'seg_ce': 0.5, 'dice': 0.5})
  config.loss_params = ml_collections.ConfigDict()
  config.num_train_steps = 3000
  # Every evaluation runs over all 3,669 test images: evaluate and checkpoint less often.
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval_batch_size = 200  # Divides by 1, 2, 4 and 8 devices.
  return config
