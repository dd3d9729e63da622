"""Command line entry point: python train.py --config=configs/default.py --workdir=runs/vae

The command itself is segae_jax/main.py (installed as segae-train, which runs from any directory
and also takes a shipped config by name: segae-train --config=folder ...). Config fields are
overridden with --config.<key>=<value>; bad input prints one line and exits with status 2.
"""
from segae_jax import main

if __name__ == '__main__':
  main.run()
