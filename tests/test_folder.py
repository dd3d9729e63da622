"""The segmentation_folder builder on real image and mask files written here with Pillow."""
import os

import numpy as np
import pytest
from PIL import Image

from segae_jax.data import fingerprint, folder, local, sources
from segae_jax.errors import UserInputError

HEIGHT, WIDTH = 20, 24  # Source files, stored at this size; the pipeline makes them 16x16.
LABELS = np.array([0, 1, 3], np.uint8)  # Class 2 never drawn: interpolation would invent it.


def _write(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)
  return str(path)


def _make_folder(root, n=12, seed=0, gray=False, stems=None):
  """n random RGB (or grayscale) 20x24 PNG images under root/images and label PNGs under root/masks.

  Returns (images_dir, masks_dir, {stem: image array}, {stem: mask array}).
  """
  rng = np.random.default_rng(seed)
  images, masks = {}, {}
  for stem in stems or [f'img{i:02d}' for i in range(n)]:
    shape = (HEIGHT, WIDTH) if gray else (HEIGHT, WIDTH, 3)
    images[stem] = rng.integers(0, 256, shape, dtype=np.uint8)
    masks[stem] = rng.choice(LABELS, (HEIGHT, WIDTH))
    _write(os.path.join(root, 'images', f'{stem}.png'), images[stem])
    _write(os.path.join(root, 'masks', f'{stem}.png'), masks[stem])
  return os.path.join(root, 'images'), os.path.join(root, 'masks'), images, masks


def _config(images_dir, masks_dir, **kwargs):
  args = dict(images_dir=str(images_dir), masks_dir=str(masks_dir), num_classes=4,
              image_size=(16, 16), test_fraction=0.25)
  args.update(kwargs)
  return folder.FolderConfig(**args)


def _read(builder, split):
  """A whole split as arrays, 'file_name' as a list of str."""
  source = builder.as_data_source()[split]
  examples = source.__getitems__(list(range(len(source))))
  out = {'image': np.stack([e['image'] for e in examples]),
         'segmentation': np.stack([e['segmentation'][..., 0] for e in examples])}
  out['file_name'] = [e['file_name'].decode() if isinstance(e['file_name'], bytes)
                      else str(e['file_name']) for e in examples]
  return out


def _nearest(array, height, width):
  """Nearest-neighbour resize by the pixel-centre rule, independent of Pillow."""
  rows = ((np.arange(height) + 0.5) * array.shape[0] / height).astype(int)
  cols = ((np.arange(width) + 0.5) * array.shape[1] / width).astype(int)
  return array[rows][:, cols]


def _area_weights(n, m):
  """[m, n]: output pixel i averages input pixels by their overlap with [i * n / m, (i+1) n / m)."""
  lo, hi = np.arange(m)[:, None] * n / m, (np.arange(m)[:, None] + 1) * n / m
  j = np.arange(n)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
  return overlap / overlap.sum(1, keepdims=True)


def _leftovers(tfds_dir):
  """Every dataset or incomplete.* folder under tfds_dir."""
  found = []
  for root, dirs, _ in os.walk(tfds_dir):
    found += [os.path.join(root, d) for d in dirs
              if d.startswith('incomplete.') or d == '2.0.0' or d.startswith('folder_')]
  return found


def test_good_folder_is_stored_at_its_own_size_and_resized_by_the_pipeline(tmp_path):
  images_dir, masks_dir, images, masks = _make_folder(tmp_path)
  tfds_dir = str(tmp_path / 'tfds')
  builder = folder.prepare(_config(images_dir, masks_dir), tfds_dir)
  train, test = _read(builder, 'train'), _read(builder, 'test')
  assert len(test['file_name']) == 3 and len(train['file_name']) == 9  # round(0.25 * 12).
  assert sorted(train['file_name'] + test['file_name']) == sorted(images)
  assert train['file_name'] == sorted(train['file_name'])  # Stored in file-stem order.
  assert train['image'].shape == (9, HEIGHT, WIDTH, 3) and train['image'].dtype == np.uint8
  assert builder.info.metadata['sizes']['train'] == {
      'count': 9, 'min_height': HEIGHT, 'min_width': WIDTH, 'max_height': HEIGHT,
      'max_width': WIDTH, 'pixels': 9 * HEIGHT * WIDTH}
  preprocess = folder.Preprocess((16, 16), 'resize')
  for split in (train, test):
    batch = preprocess(split, None)
    assert batch['image'].shape[1:] == (16, 16, 3) and batch['segmentation'].dtype == np.int32
    for stem, image, mask, fitted, labels in zip(split['file_name'], split['image'],
                                                 split['segmentation'], batch['image'],
                                                 batch['segmentation']):
      np.testing.assert_array_equal(image, images[stem])  # PNG: lossless.
      np.testing.assert_array_equal(mask, masks[stem])
      assert set(np.unique(labels)) <= set(LABELS.tolist())
      np.testing.assert_array_equal(labels, _nearest(masks[stem], 16, 16))
      # Shrinking averages areas (no aliasing): the exact area average, within rounding.
      averaged = np.einsum('ih,hwc,jw->ijc', _area_weights(HEIGHT, 16), images[stem],
                           _area_weights(WIDTH, 16))
      assert np.abs(fitted * 255 - averaged).max() <= 0.51
  assert os.path.isdir(os.path.join(tfds_dir, 'segmentation_folder', builder.builder_config.name,
                                    '2.0.0'))
  assert not [p for p in _leftovers(tfds_dir) if 'incomplete.' in p]


def test_max_size_caps_the_long_side_keeping_the_aspect(tmp_path):
  images_dir, masks_dir, _, masks = _make_folder(tmp_path, n=4)
  builder = folder.prepare(_config(images_dir, masks_dir, max_size=12), str(tmp_path / 'tfds'))
  stored = _read(builder, 'train')
  assert stored['image'].shape[1:] == (10, 12, 3)  # 20x24 -> 10x12.
  for stem, mask in zip(stored['file_name'], stored['segmentation']):
    np.testing.assert_array_equal(mask, _nearest(masks[stem], 10, 12))


def test_a_split_is_written_in_shards_of_bounded_size(tmp_path, monkeypatch):
  """Shards of 4 examples (20x24x3 image + 20x24 mask = 1,920 bytes decoded each): the 9
  training examples go to 3 array_record files, read back in file-stem order, as one file holds
  them."""
  images_dir, masks_dir, _, _ = _make_folder(tmp_path)
  whole = _read(folder.prepare(_config(images_dir, masks_dir), str(tmp_path / 'one')), 'train')
  monkeypatch.setattr(local, 'SHARD_BYTES', 4 * 1920)
  builder = folder.prepare(_config(images_dir, masks_dir), str(tmp_path / 'sharded'))
  assert builder.info.splits['train'].shard_lengths == [4, 4, 1]
  sharded = _read(builder, 'train')
  assert sharded['file_name'] == whole['file_name']
  np.testing.assert_array_equal(sharded['image'], whole['image'])
  np.testing.assert_array_equal(sharded['segmentation'], whole['segmentation'])
  # An error message about example 5 names the shard file it is in: the second of three.
  where = sources.describe_example(builder.as_data_source()['train'], 5)
  assert where.startswith("example 5 of split 'train' (") and where.endswith('-00001-of-00003)')


def test_fraction_split_is_seeded_and_disjoint(tmp_path, monkeypatch):
  images_dir, masks_dir, images, _ = _make_folder(tmp_path)
  tests = {}
  for seed, tfds_name in ((0, 'a'), (0, 'b'), (5, 'c')):
    builder = folder.prepare(_config(images_dir, masks_dir, split_seed=seed),
                             str(tmp_path / tfds_name))
    train, test = _read(builder, 'train')['file_name'], _read(builder, 'test')['file_name']
    assert not set(train) & set(test) and set(train) | set(test) == set(images)
    tests[tfds_name] = test
  assert tests['a'] == tests['b'] and tests['a'] != tests['c']
  # The config name hashes every stored setting, with paths made absolute; the training size
  # and how images reach it are the pipeline's, so one prepared dataset serves them all.
  monkeypatch.chdir(tmp_path)
  base = _config(images_dir, masks_dir).name
  assert _config('images', 'masks').name == base
  assert _config(images_dir, masks_dir, split_seed=1).name != base
  assert _config(images_dir, masks_dir, max_size=10).name != base
  assert _config(images_dir, masks_dir, resize='center_crop', image_size=(8, 8)).name == base
  assert _config(images_dir, tmp_path / 'images').name != base


def test_folders_split(tmp_path):
  _make_folder(tmp_path / 'train', n=5, seed=1)
  _make_folder(tmp_path / 'test', n=3, seed=2, stems=['t0', 't1', 't2'])
  os.makedirs(tmp_path / 'images')
  os.makedirs(tmp_path / 'masks')
  for split in ('train', 'test'):
    os.rename(tmp_path / split / 'images', tmp_path / 'images' / split)
    os.rename(tmp_path / split / 'masks', tmp_path / 'masks' / split)
  builder = folder.prepare(_config(tmp_path / 'images', tmp_path / 'masks', split='folders'),
                           str(tmp_path / 'tfds'))
  assert _read(builder, 'train')['file_name'] == [f'img{i:02d}' for i in range(5)]
  assert _read(builder, 'test')['file_name'] == ['t0', 't1', 't2']


def test_center_crop_takes_the_centre(tmp_path):
  rows, cols = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing='ij')
  image = np.stack([rows * 10, cols * 10, np.full_like(rows, 7)], -1).astype(np.uint8)
  mask = ((rows + cols) % 4).astype(np.uint8)
  for i in range(4):
    _write(tmp_path / 'images' / f'{i}.png', image)
    _write(tmp_path / 'masks' / f'{i}.png', mask)
  builder = folder.prepare(_config(tmp_path / 'images', tmp_path / 'masks', resize='center_crop'),
                           str(tmp_path / 'tfds'))
  example = folder.Preprocess((16, 16), 'center_crop')(_read(builder, 'train'), None)
  example['image'] = np.round(example['image'] * 255).astype(np.uint8)
  # 20x24 -> 16x16: rows 2..17, columns 4..19.
  np.testing.assert_array_equal(example['image'][0, :, 0, 0], np.arange(2, 18) * 10)
  np.testing.assert_array_equal(example['image'][0, 0, :, 1], np.arange(4, 20) * 10)
  assert (example['image'][..., 2] == 7).all()
  np.testing.assert_array_equal(example['segmentation'][0], mask[2:18, 4:20])


def test_load_gives_dataset_with_class_names_and_preprocess(tmp_path):
  images_dir, masks_dir, _, masks = _make_folder(tmp_path, n=8)
  names_file = tmp_path / 'classes.txt'
  names_file.write_text('background\ncat\n\ndog\nbird\n')
  data_config = dict(name='segmentation_folder', images_dir=images_dir, masks_dir=masks_dir,
                     image_size=(16, 16), channels=3, num_classes=4,
                     class_names_file=str(names_file), resize='resize', split='fraction',
                     test_fraction=0.25, split_seed=0, tfds_dir=str(tmp_path / 'tfds'))
  ds = folder.load(data_config)
  assert ds.name == 'segmentation_folder' and ds.image_shape == (16, 16, 3)
  assert ds.num_classes == 4 and tuple(ds.class_names) == ('background', 'cat', 'dog', 'bird')
  assert len(ds.train) == 6 and len(ds.test) == 2
  assert set(ds.train.arrays) == {'image', 'segmentation'} and ds.unlabeled is None
  assert ds.sizes['test']['max_width'] == WIDTH
  batch = ds.preprocess(ds.train.__getitems__([0, 3]), np.random.default_rng(0))
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (2, 16, 16, 3)
  assert batch['segmentation'].dtype == np.int32 and batch['segmentation'].shape == (2, 16, 16)
  raw = ds.train.__getitems__([0, 3])
  assert raw['image'].shape == (2, HEIGHT, WIDTH, 3)  # Held at its own size.
  np.testing.assert_array_equal(batch['segmentation'],
                                [_nearest(m[..., 0], 16, 16) for m in raw['segmentation']])
  data_config['class_names_file'] = ''
  assert tuple(folder.load(data_config).class_names) == ('class_0', 'class_1', 'class_2', 'class_3')


def test_jpeg_tiff_palette_and_alpha_inputs(tmp_path):
  rng = np.random.default_rng(3)
  smooth = np.kron(rng.integers(40, 216, (5, 6, 3)), np.ones((4, 4, 1))).astype(np.uint8)
  gray = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
  masks = {s: rng.choice(LABELS, (HEIGHT, WIDTH)) for s in 'abcde'}
  _write(tmp_path / 'rgb' / 'a.jpg', smooth)
  _write(tmp_path / 'rgb' / 'b.JPEG', smooth)
  _write(tmp_path / 'rgb' / 'c.tif', smooth)
  opaque = np.concatenate([smooth, np.full((HEIGHT, WIDTH, 1), 255, np.uint8)], -1)
  _write(tmp_path / 'rgb' / 'd.png', opaque)  # Fully opaque alpha is dropped.
  _write(tmp_path / 'rgb' / 'e.TIFF', smooth)
  _write(tmp_path / 'rgb_masks' / 'a.png', masks['a'])
  _write(tmp_path / 'rgb_masks' / 'b.tiff', masks['b'].astype(np.int32))  # Mode I.
  palette = Image.frombytes('P', (WIDTH, HEIGHT), masks['c'].tobytes())
  palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
  palette.save(tmp_path / 'rgb_masks' / 'c.png')  # Palette index = label, colours ignored.
  _write(tmp_path / 'rgb_masks' / 'd.png', masks['d'].astype(np.uint16))  # Mode I;16.
  _write(tmp_path / 'rgb_masks' / 'e.tif', masks['e'])
  config = _config(tmp_path / 'rgb', tmp_path / 'rgb_masks', image_size=(HEIGHT, WIDTH),
                   test_fraction=0.2)
  builder = folder.prepare(config, str(tmp_path / 'tfds'))
  examples = {}
  for split in ('train', 'test'):
    read = _read(builder, split)
    examples.update({s: (i, m) for s, i, m in zip(read['file_name'], read['image'],
                                                  read['segmentation'])})
  assert sorted(examples) == list('abcde')
  for stem in 'abcde':
    image, mask = examples[stem]
    np.testing.assert_array_equal(mask, masks[stem])  # Same size: stored as is.
    if stem in 'ab':  # JPEG is lossy: Pillow's decode of the file, close to the source.
      jpeg = next(p for p in os.listdir(tmp_path / 'rgb') if p.startswith(stem))
      np.testing.assert_array_equal(image, np.asarray(Image.open(tmp_path / 'rgb' / jpeg)))
      assert np.abs(image.astype(int) - smooth).mean() < 20  # Another image: about 60.
    else:
      np.testing.assert_array_equal(image, smooth)
  # Grayscale TIFF images with channels=1.
  _write(tmp_path / 'gray' / 'g.tif', gray)
  _write(tmp_path / 'gray' / 'h.tif', gray[::-1])
  _write(tmp_path / 'gray_masks' / 'g.png', masks['a'])
  _write(tmp_path / 'gray_masks' / 'h.png', masks['b'])
  builder = folder.prepare(_config(tmp_path / 'gray', tmp_path / 'gray_masks', channels=1,
                                   image_size=(HEIGHT, WIDTH), test_fraction=0.5),
                           str(tmp_path / 'tfds'))
  images = {**dict(zip(_read(builder, 'train')['file_name'], _read(builder, 'train')['image'])),
            **dict(zip(_read(builder, 'test')['file_name'], _read(builder, 'test')['image']))}
  np.testing.assert_array_equal(images['g'], gray[..., None])
  np.testing.assert_array_equal(images['h'], gray[::-1, :, None])


# Each bad case changes a good 12-image folder in `root` and returns (config overrides, the
# offending file or folder that the message must name, another text it must contain).
def _missing_images_dir(root):
  return {'images_dir': str(root / 'nope')}, root / 'nope', 'does not exist'


def _missing_masks_dir(root):
  return {'masks_dir': str(root / 'nope')}, root / 'nope', 'does not exist'


def _empty_images_dir(root):
  (root / 'empty').mkdir()
  (root / 'empty' / 'notes.txt').write_text('no images here')
  return {'images_dir': str(root / 'empty')}, root / 'empty', 'no image files'


def _corrupt_image(root):
  (root / 'images' / 'img03.png').write_bytes(b'this is not a png')
  return {}, root / 'images' / 'img03.png', 'cannot read image'


def _truncated_image(root):
  path = root / 'images' / 'img11.png'
  path.write_bytes(path.read_bytes()[:-400])  # Cut inside the pixel data.
  return {}, path, 'truncated'


def _truncated_mask(root):
  path = root / 'masks' / 'img04.png'
  path.write_bytes(path.read_bytes()[:-40])
  return {}, path, 'cannot read mask'


def _mask_without_image(root):
  _write(root / 'masks' / 'zz.png', np.zeros((HEIGHT, WIDTH), np.uint8))
  return {}, root / 'masks' / 'zz.png', 'mask without an image'


def _image_without_mask(root):
  os.remove(root / 'masks' / 'img07.png')
  return {}, root / 'images' / 'img07.png', 'image without a mask'


def _size_mismatch(root):
  _write(root / 'masks' / 'img02.png', np.zeros((HEIGHT, WIDTH + 1), np.uint8))
  return {}, root / 'masks' / 'img02.png', f'is {HEIGHT}x{WIDTH + 1} (height x width) but'


def _label_too_large(root):
  mask = np.zeros((HEIGHT, WIDTH), np.uint8)
  mask[5, 5] = 4
  _write(root / 'masks' / 'img10.png', mask)
  return {}, root / 'masks' / 'img10.png', 'label value 4 >= config.data.num_classes (4)'


def _gray_image_for_rgb(root):
  _write(root / 'images' / 'img06.png', np.zeros((HEIGHT, WIDTH), np.uint8))
  return ({}, root / 'images' / 'img06.png',
          'has 1 channel(s) (grayscale, mode L) but config.data.channels is 3')


def _rgb_image_for_gray(root):
  _write(root / 'images' / 'img06.png', np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  return {'channels': 1}, root / 'images' / 'img06.png', 'has 3 channel(s)'


def _transparent_image(root):
  rgba = np.full((HEIGHT, WIDTH, 4), 200, np.uint8)
  rgba[0, 0, 3] = 0
  _write(root / 'images' / 'img01.png', rgba)
  return {}, root / 'images' / 'img01.png', 'transparent pixels'


def _rgb_mask(root):
  _write(root / 'masks' / 'img08.png', np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  return {}, root / 'masks' / 'img08.png', 'expected a single-channel label image'


def _sixteen_bit_image(root):
  """One 16-bit image among 8-bit ones (16-bit images are read, but one dataset has one depth)."""
  _write(root / 'images' / 'img09.png', np.zeros((HEIGHT, WIDTH), np.uint16))
  return {'channels': 1}, root / 'images' / 'img09.png', 'expected one bit depth'


def _multi_frame_tiff(root):
  os.remove(root / 'images' / 'img05.png')
  frames = [Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)) for _ in range(3)]
  frames[0].save(root / 'images' / 'img05.tif', save_all=True, append_images=frames[1:])
  return {}, root / 'images' / 'img05.tif', '3 frames'


def _duplicate_stem(root):
  _write(root / 'images' / 'img00.jpg', np.zeros((HEIGHT, WIDTH, 3), np.uint8))
  return {}, root / 'images' / 'img00.png', 'same file stem'


def _empty_test_split(root):
  return {'test_fraction': 0.04}, root / 'images', 'leave the test split empty'


def _empty_train_split(root):
  return {'test_fraction': 0.97}, root / 'images', 'leave the train split empty'


def _crop_larger_than_image(root):
  _write(root / 'images' / 'img04.png', np.zeros((12, 30, 3), np.uint8))
  _write(root / 'masks' / 'img04.png', np.zeros((12, 30), np.uint8))
  return {'resize': 'center_crop'}, root / 'images' / 'img04.png', 'smaller than'


def _missing_test_folder(root):
  os.makedirs(root / 'images' / 'train')
  os.makedirs(root / 'masks' / 'train')
  for name in os.listdir(root / 'images'):
    if name.endswith('.png'):
      os.rename(root / 'images' / name, root / 'images' / 'train' / name)
      os.rename(root / 'masks' / name, root / 'masks' / 'train' / name)
  return {'split': 'folders'}, root / 'images' / 'test', 'does not exist'


def _wrong_class_count(root):
  (root / 'classes.txt').write_text('a\nb\nc\n')
  return ({'class_names_file': str(root / 'classes.txt')}, root / 'classes.txt',
          '3 class names (one per non-blank line) but config.data.num_classes is 4')


def _missing_class_names_file(root):
  return ({'class_names_file': str(root / 'nope.txt')}, root / 'nope.txt',
          'cannot read class names')


BAD_CASES = [_missing_images_dir, _missing_masks_dir, _empty_images_dir, _corrupt_image,
             _truncated_image, _truncated_mask, _mask_without_image, _image_without_mask,
             _size_mismatch, _label_too_large, _gray_image_for_rgb, _rgb_image_for_gray,
             _transparent_image, _rgb_mask, _sixteen_bit_image, _multi_frame_tiff,
             _duplicate_stem, _empty_test_split, _empty_train_split, _crop_larger_than_image,
             _missing_test_folder, _wrong_class_count, _missing_class_names_file]


@pytest.mark.parametrize('case', BAD_CASES, ids=lambda c: c.__name__.strip('_'))
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, case):
  _make_folder(tmp_path, gray=case is _rgb_image_for_gray or case is _sixteen_bit_image)
  overrides, offending, text = case(tmp_path)
  config = _config(**{'images_dir': tmp_path / 'images', 'masks_dir': tmp_path / 'masks',
                      **overrides})
  tfds_dir = tmp_path / 'tfds'
  # A folder another attempt left (killed, or still building into a shared tfds_dir) is not
  # this attempt's to remove: it stays, and nothing else does.
  stale = tfds_dir / 'segmentation_folder' / config.name / 'incomplete.KILLED_1.0.0'
  stale.mkdir(parents=True)
  (stale / 'segmentation_folder-train.array_record-00000-of-00001').write_bytes(b'partial')
  with pytest.raises(UserInputError) as error:
    folder.prepare(config, str(tfds_dir))
  message = str(error.value)
  assert str(offending) in message and text in message, message
  assert '\n' not in message
  assert [p for p in _leftovers(tfds_dir) if 'incomplete.' in p] == [str(stale)]
  assert sorted(os.listdir(stale)) == ['segmentation_folder-train.array_record-00000-of-00001']


def test_instance_masks_train_foreground_in_foreground_mode(tmp_path):
  """A 16-bit instance label image (ids 1..300, 0 background): refused as classes, read as
  background / foreground with mask_mode='foreground', and the stored settings keep the names of
  datasets prepared before the field (mask_mode='classes' adds nothing to the hash)."""
  rng = np.random.default_rng(0)
  for stem in ('a', 'b', 'c', 'd'):
    _write(tmp_path / 'images' / f'{stem}.png', rng.integers(0, 256, (HEIGHT, WIDTH), np.uint8))
    instances = np.zeros((HEIGHT, WIDTH), np.uint16)
    instances[2:6, 3:9], instances[10:14, 12:20] = 1, 300 if stem == 'a' else 7
    _write(tmp_path / 'masks' / f'{stem}.png', instances)  # Mode I;16.
  with pytest.raises(UserInputError, match=r'a\.png: label value 300 >= config.data.num_classes'):
    folder.prepare(_config(tmp_path / 'images', tmp_path / 'masks', channels=1, num_classes=2),
                   str(tmp_path / 'tfds_classes'))
  config = _config(tmp_path / 'images', tmp_path / 'masks', channels=1, num_classes=2,
                   mask_mode='foreground', image_size=(HEIGHT, WIDTH))
  builder = folder.prepare(config, str(tmp_path / 'tfds'))
  for split in ('train', 'test'):
    for mask in _read(builder, split)['segmentation']:
      expected = np.zeros((HEIGHT, WIDTH), np.uint8)
      expected[2:6, 3:9] = expected[10:14, 12:20] = 1
      np.testing.assert_array_equal(mask, expected)
  assert 'mask_mode' not in _config(tmp_path, tmp_path).settings()
  assert config.name != _config(tmp_path / 'images', tmp_path / 'masks', channels=1,
                                num_classes=2, image_size=(HEIGHT, WIDTH)).name
  with pytest.raises(UserInputError, match=r"mask_mode='foreground' makes 2 classes"):
    _config(tmp_path, tmp_path, mask_mode='foreground', num_classes=3)
  with pytest.raises(UserInputError, match=r"config.data.mask_mode='instances'; expected one of"):
    _config(tmp_path, tmp_path, mask_mode='instances')


def test_ignore_label_keeps_unknown_pixels_out_of_the_classes(tmp_path):
  """Pseudo-masks with 255 on the pixels of unknown class: refused as a class id, stored as they
  are with ignore_label=255 (and left out of the inferred class count); the default leaves the
  stored settings, so the names of datasets prepared before the field, as they were."""
  rng = np.random.default_rng(0)
  for stem in ('a', 'b', 'c', 'd'):
    _write(tmp_path / 'images' / f'{stem}.png', rng.integers(0, 256, (HEIGHT, WIDTH), np.uint8))
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[2:6, 3:9], mask[10:14, 12:20] = 2, 255
    _write(tmp_path / 'masks' / f'{stem}.png', mask)
  with pytest.raises(UserInputError, match=r'\.png: label value 255 >= config.data.num_classes'):
    folder.prepare(_config(tmp_path / 'images', tmp_path / 'masks', channels=1, num_classes=3),
                   str(tmp_path / 'tfds_refused'))
  config = _config(tmp_path / 'images', tmp_path / 'masks', channels=1, num_classes=3,
                   ignore_label=255, image_size=(HEIGHT, WIDTH))
  builder = folder.prepare(config, str(tmp_path / 'tfds'))
  for split in ('train', 'test'):
    for mask in _read(builder, split)['segmentation']:
      np.testing.assert_array_equal(np.unique(mask), [0, 2, 255])
      assert (mask[10:14, 12:20] == 255).all()
  fp = fingerprint.measure({'images_dir': str(tmp_path / 'images'),
                          'masks_dir': str(tmp_path / 'masks')}, read_masks=True)
  assert fingerprint.infer_num_classes(fp, 'classes', 255) == 3
  assert fingerprint.infer_num_classes(fp, 'classes') == 256
  assert 'ignore_label' not in _config(tmp_path, tmp_path).settings()
  assert config.settings()['ignore_label'] == 255
  for bad in (2, 256, 1.5):
    with pytest.raises(UserInputError, match=r'config.data.ignore_label must be -1 \(none\)'):
      _config(tmp_path, tmp_path, num_classes=3, ignore_label=bad)


def test_bad_settings_name_the_key(tmp_path):
  good = dict(images_dir=str(tmp_path), masks_dir=str(tmp_path), num_classes=4)
  for override, key in (({'channels': 0}, 'config.data.channels'),
                        ({'channels': 2.5}, 'config.data.channels'),
                        ({'normalize': 'minmax'}, r"config.data.normalize='minmax'; expected one "
                                                  r'of unit, zscore, percentile'),
                        ({'num_classes': 300}, 'config.data.num_classes'),
                        ({'resize': 'stretch'}, 'config.data.resize'),
                        ({'split': 'random'}, 'config.data.split'),
                        ({'test_fraction': 1.0}, 'config.data.test_fraction'),
                        ({'image_size': (16,)}, 'config.data.image_size'),
                        ({'split_seed': -1}, 'config.data.split_seed'),
                        ({'max_size': -5}, 'config.data.max_size')):
    with pytest.raises(UserInputError, match=key):
      folder.FolderConfig(**{**good, **override})
  with pytest.raises(UserInputError, match='config.data.masks_dir must be set'):
    folder.load({'name': 'segmentation_folder', 'images_dir': str(tmp_path), 'num_classes': 4})


def test_preparing_leaves_no_temporary_folder(tmp_path, monkeypatch):
  """tfds looks up precomputed metadata for every builder of an unprepared dataset, first making a
  temporary folder it never removes (one /tmp/tmp*tfds per command); our builders skip that."""
  import tempfile
  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
  images_dir, masks_dir, _, _ = _make_folder(tmp_path, n=4)
  folder.prepare(_config(images_dir, masks_dir), str(tmp_path / 'tfds'))
  assert os.listdir(scratch) == []
