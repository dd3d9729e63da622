"""U-Net baseline on fashion_mnist_scenes (64x64 scenes of 1-4 real Fashion-MNIST garments, 11
classes: background + 10 garment types; masks derived from pixel values). Fits the 15-minute
budget on 2 CPU cores."""
import ml_collections

from configs import default


def scenes_data() -> ml_collections.ConfigDict:
  """The scenes dataset, shared by every *_scenes config."""
  return ml_collections.ConfigDict({
      'name': 'fashion_mnist_scenes', 'idx_dir': '', 'tfds_dir': '', 'canvas_size': 64,
      'num_train': 10000, 'num_test': 2000, 'min_objects': 1, 'max_objects': 4,
      'min_scale': 0.75, 'max_scale': 1.5, 'scenes_seed': 0,
      'augment': {'flip': True, 'crop_min_scale': 1.0, 'brightness': 0.0, 'contrast': 0.0},
      # With labeled_fraction < 1: how many of each batch come from the scenes whose masks are
      # hidden (a pool; 0 keeps them in the batches, flagged).
      'unlabeled_per_batch': 0,
      **default.input_pipeline_fields(),
  })


def get_config():
  config = default.get_config()
  config.data = scenes_data()
  config.model = ml_collections.ConfigDict({
      'name': 'unet', 'features': (16, 32, 64, 128), 'norm': 'batch', 'upsample': 'transpose',
      'dropout': 0.0,
  })
  config.loss = ml_collections.ConfigDict({'seg_ce': 1.0})
  config.loss_params = ml_collections.ConfigDict()
  config.learning_rate = 3e-3
  config.warmup_steps = 100
  config.batch_size = 32
  config.num_train_steps = 1200
  config.log_every_steps = 100
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  config.eval_batch_size = 200
  config.best_metric = 'miou'
  config.num_pictures = 8
  return config
