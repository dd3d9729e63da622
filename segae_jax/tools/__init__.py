"""Research tools on a trained run, all on one backbone (common.py: the restored run, batched
inference, image reading, result headers, tables): evaluate, predict, detect, unsupervised,
generate, compress, probe, sweep. Each is a command: python -m segae_jax.tools.<name> --help.
"""
