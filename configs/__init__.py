"""The shipped configs: `python train.py --config=configs/<name>.py`, or installed as
segae_jax.configs (`segae-train --config=<name>`; segae_jax/shipped_configs.py).

The files import each other as `configs` (`from configs import default`). Imported as
segae_jax.configs from outside the repository, this package is also made `configs`, so
`import segae_jax.configs.folder` works anywhere.
"""
import sys

if __name__ != 'configs' and 'configs' not in sys.modules:
  sys.modules['configs'] = sys.modules[__name__]
