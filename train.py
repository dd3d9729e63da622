"""Command line entry point: python train.py --config=configs/default.py --workdir=runs/vae

Config fields are overridden with --config.<key>=<value>. Bad input (unknown key, wrong type,
invalid value, missing data, a workdir of another model) prints one line and exits with status 2.
"""
import os

from absl import flags
from ml_collections import config_flags

from segae_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                  lock_config=True)


def main() -> None:
  from segae_jax import train  # After flag parsing: `--help` stays fast.
  results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  outputs = ', '.join(sorted(os.listdir(FLAGS.workdir)))
  print(f'Results in {FLAGS.workdir}: {outputs} (results.json holds the test metrics)')
  print('test ' + ' '.join(f'{k}={v:.4g}' for k, v in sorted(results['test'].items())
                           if k != 'per_class'))


if __name__ == '__main__':
  cli.run_command(main, define_flags, ['config', 'workdir'])
