"""Native kernels behind a fallback: oneDNN convolutions as XLA custom calls (see onednn.py)."""
