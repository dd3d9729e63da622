"""Command line entry point: python train.py --config=configs/default.py --workdir=runs/vae

Config fields are overridden with --config.<key>=<value>. Bad input (unknown key, wrong type,
invalid value, missing data, a workdir of another model) prints one line and exits with status 2.
"""
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from segae_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()).',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {" ".join(argv[1:])}')
  # Our progress lines at INFO; library chatter (orbax logs every save at INFO) only from WARNING.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger('segae_jax').setLevel(std_logging.INFO)
  from segae_jax import train  # After flag parsing: `--help` stays fast.
  with cli.user_errors():
    results = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(f'Results in {FLAGS.workdir}: results.json (test metrics), metrics.jsonl, '
        'reconstructions.png, tensorboard/, checkpoints/')
  print('test ' + ' '.join(f'{k}={v:.4g}' for k, v in sorted(results['test'].items())))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
