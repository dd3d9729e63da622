"""A VAE on your own images, no masks needed (dataset image_folder): RGB, 128x128 by default.

  python train.py --config=configs/vae_folder.py --workdir=runs/my_vae \\
    --config.data.images_dir=data/photos [--config.data.channels=1 --config.data.image_size=64,64]

Every image below images_dir (any size, PNG/JPEG/TIFF/BMP) is checked and stored once at its own
size (the long side capped at data.max_size if > 0); the input pipeline resizes it (test) or takes
a random resized crop of it (training, data.augment.crop_min_scale) to image_size.
"""
import ml_collections

from configs import default


def image_folder_data() -> ml_collections.ConfigDict:
  """The image_folder dataset, shared by the *_folder autoencoder configs."""
  return ml_collections.ConfigDict({
      'name': 'image_folder',
      'images_dir': 'data/images',  # Searched recursively; split='folders': train/ and test/.
      'image_size': (128, 128),     # (height, width) the model sees.
      'channels': 3,                # 1 = grayscale, 3 = RGB, or any count (TIFF stacks).
      'resize': 'resize',           # or 'center_crop' (crop only; smaller images refused).
      'split': 'fraction',          # or 'folders'.
      'test_fraction': 0.2,
      'split_seed': 0,
      'max_size': 0,                # > 0: store images with the long side capped at this.
      'binarize': False,            # True: dynamic binarisation (grayscale digit-like images).
      'normalize': 'unit',          # [0, 1], which the reconstruction losses expect.
      'tfds_dir': '',
      'augment': {'flip': True, 'crop_min_scale': 0.8, 'brightness': 0.0, 'contrast': 0.0},
      **default.input_pipeline_fields(),
  })


def get_config():
  config = default.get_config()
  config.data = image_folder_data()
  config.model.features = (32, 64, 128, 256)   # 128 / 16 = 8x8 before the dense layers.
  config.model.latent_dim = 64
  config.batch_size = 64
  config.num_train_steps = 3000
  config.eval_every_steps = 1000
  config.eval_batch_size = 100
  config.num_pictures = 16
  return config
