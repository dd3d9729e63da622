"""The confusion matrix of a segmentation evaluation, as a picture and as counts.

Rows are the true classes, columns the predicted ones (C[true, predicted], pixels); the picture
shows each row normalised to sum to 1 (the fraction of a class's pixels predicted as each class:
the diagonal is the class's recall), with the class names, as scikit-learn's
`ConfusionMatrixDisplay(normalize='true')` draws it.
"""
from typing import Any, Dict, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 44        # Pixels per cell side.
TOP = 28         # Pixels above the cells (the predicted class indices).
COLOUR = np.array([31, 119, 180], np.float64)  # The colour of a fraction of 1 (white at 0).


def row_normalised(counts: np.ndarray) -> np.ndarray:
  """float64 [k, k]: each row of counts [k, k] divided by its sum (a row without pixels: 0)."""
  counts = np.asarray(counts, np.float64)
  totals = counts.sum(1, keepdims=True)
  return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def as_json(counts: np.ndarray, class_names: Sequence[str]) -> Dict[str, Any]:
  """{'classes': names, 'counts': int [[true][predicted]] pixels, 'row_normalised': floats}."""
  return {'classes': list(class_names),
          'counts': np.asarray(counts).astype(np.int64).tolist(),
          'row_normalised': np.round(row_normalised(counts), 6).tolist()}


def picture(counts: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
  """uint8 [height, width, 3]: the row-normalised matrix as coloured cells holding their
  fraction (two decimals), true classes down the left ('index name'), predicted class indices
  across the top."""
  fractions = row_normalised(counts)
  k = len(class_names)
  font, labels, left = _layout(class_names)
  top = TOP
  image = Image.new('RGB', (left + k * CELL + 4, top + k * CELL + 4), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((4, 6), 'true \\ predicted', fill='black', font=font)
  for i in range(k):
    draw.text((left + i * CELL + CELL // 2 - 4, 10), str(i), fill='black', font=font)
    draw.text((4, top + i * CELL + CELL // 2 - 6), labels[i], fill='black', font=font)
    for j in range(k):
      value = fractions[i, j]
      colour = tuple(int(round(c)) for c in 255 + value * (COLOUR - 255))
      x, y = left + j * CELL, top + i * CELL
      draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=colour, outline='grey')
      draw.text((x + 8, y + CELL // 2 - 6), f'{value:.2f}',
                fill='white' if value > 0.5 else 'black', font=font)
  return np.asarray(image)


def _layout(class_names: Sequence[str]):
  """(font, row labels, pixels left of the cells)."""
  font = ImageFont.load_default()
  labels = [f'{i} {name}' for i, name in enumerate(class_names)]
  left = 12 + max(int(font.getlength(text)) for text in labels + ['true \\ predicted'])
  return font, labels, left


def cell_corner(class_names: Sequence[str], true: int, predicted: int):
  """(row, column) in `picture`'s pixels of a point of cell (true, predicted) that no text
  covers (just inside its top-left corner)."""
  _, _, left = _layout(class_names)
  return TOP + true * CELL + 3, left + predicted * CELL + 3
