"""The training command: `python train.py --config=configs/default.py --workdir=runs/vae` from the
repository, `segae-train --config=default --workdir=runs/vae` from any directory once installed.

--config is a config file's path or a shipped config's name (configs/<name>.py). Config fields are
overridden with --config.<key>=<value>. Bad input (unknown key, wrong type, invalid value, missing
data, a workdir of another model) prints one line and exits with status 2.
"""
import os

from absl import flags
from ml_collections import config_flags

from segae_jax import cli, plugins

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
  config_flags.DEFINE_config_file('config', None, 'Path to a config file (get_config()), or the '
                                  'name of a shipped one (e.g. folder, unet_scenes).',
                                  lock_config=True)
  # Multi-process runs (see docs/scaling.md): every process runs the same command.
  flags.DEFINE_bool('distributed', False, 'Join a multi-process run whose coordinator, process '
                    'count and id JAX detects (Slurm, Open MPI, TPU pods, ...).')
  flags.DEFINE_string('coordinator_address', None, "Process 0's host:port; with --num_processes "
                      'and --process_id, joins a multi-process run explicitly.')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
  flags.DEFINE_integer('process_id', None, "This process's index, 0 .. num_processes - 1.")
  flags.DEFINE_string('coordinator_bind_address', None, "Where process 0's coordinator listens "
                      '(e.g. 127.0.0.1:PORT for a run on one machine); default every interface.')


def main() -> None:
  from segae_jax.training import distributed  # After flag parsing: `--help` stays fast.
  from segae_jax import training
  from segae_jax.training import metrics
  # Before joining a multi-process run, so a broken plug-in is one line here rather than after
  # every process has joined (validation loads them again: a no-op for a module imported).
  plugins.load(FLAGS.config.get('plugins', ()))
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.coordinator_bind_address, FLAGS.distributed)
  results = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  outputs = ', '.join(sorted(os.listdir(FLAGS.workdir)))
  print(f'Results in {FLAGS.workdir}: {outputs} (results.json holds the test metrics)')
  print('test ' + metrics.summary_text(results['test'], list(FLAGS.config.loss.keys())))


def run() -> None:
  """The installed command segae-train (and train.py)."""
  cli.run_command(main, define_flags, ['config', 'workdir'])


if __name__ == '__main__':
  run()
