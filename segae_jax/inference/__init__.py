"""The inference layer: a trained model applied to images of any size, used by training (its
native-resolution test scores) and by the tools alike, importing neither.

segmenter.py holds Segmenter (label maps at each image's own size) and Inference (its options);
tiling.py the sliding-window inference; postprocess.py the test-time flips and the clean-up of
label maps; model.py the model a run's config describes and its inference-mode logits;
scoring.py the segmentation scores of a confusion matrix and at native resolution; export.py the
exported-model format (written by tools/export.py, read by Segmenter.from_export).

Light to import (no JAX until a model runs), so the tools' `--help` stays fast.
"""
from segae_jax.inference.segmenter import Inference, Segmenter
