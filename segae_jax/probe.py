"""The old name of `python -m segae_jax.tools.probe`, still accepted for one release."""
from segae_jax import cli

if __name__ == '__main__':
  cli.run_moved_command('segae_jax.tools.probe')
