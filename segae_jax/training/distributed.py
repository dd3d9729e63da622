"""Joining a multi-process (multi-host) run through JAX's own runtime, `jax.distributed`.

Every process runs the same `python train.py ...` command; `initialize` connects it to the
coordinator (process 0's address) before any computation, after which `jax.devices()` lists the
devices of all processes and both data-parallel strategies span them: pmap's collectives and the
sharded-jit mesh cover every device, each process reads its own slice of every global batch
(segae_jax.data.TrainIterator), process 0 alone writes logs, TensorBoard events and pictures, and
every process takes part in each orbax checkpoint.
"""
import logging
from typing import Callable, Optional, TypeVar

import jax
import numpy as np

from segae_jax.errors import UserInputError

log = logging.getLogger(__name__)

# What JAX's cluster detection (jax.distributed.initialize without a coordinator) reads.
DETECTED = ('Slurm: SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; '
            'Open MPI: OMPI_MCA_orte_hnp_uri; a Cloud TPU VM: its metadata server; Kubernetes '
            '(pip install .[k8s]): KUBERNETES_SERVICE_HOST and the pod\'s JobSet labels')

def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, bind_address: Optional[str] = None,
               enabled: bool = False) -> None:
  """Calls jax.distributed.initialize when asked; must run before JAX touches a device.

  Args:
    coordinator_address: 'host:port' of process 0's coordinator service (all processes give the
      same one); None with enabled=True lets JAX detect the cluster.
    num_processes, process_id: required with an explicit coordinator_address.
    bind_address: where process 0's coordinator listens, e.g. '127.0.0.1:PORT' to keep a
      single-machine run on loopback (default: every interface).
    enabled: join a run whose parameters JAX detects from the cluster's environment.
  Raises:
    UserInputError: an explicit coordinator without num_processes/process_id, a process_id
      outside [0, num_processes), or enabled=True where JAX detects no cluster.
  """
  if not (coordinator_address or enabled):
    return
  if coordinator_address:  # Explicit; otherwise JAX detects the cluster (Slurm, TPU pods, ...).
    if num_processes is None or process_id is None:
      raise UserInputError('--coordinator_address needs --num_processes and --process_id')
    if not 0 <= process_id < num_processes:
      raise UserInputError(f'--process_id={process_id} must be in [0, --num_processes='
                           f'{num_processes})')
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               coordinator_bind_address=bind_address)
  except ValueError as error:
    if coordinator_address or 'coordinator_address' not in str(error):
      raise
    # JAX found no cluster to take the coordinator, process count and id from.
    raise UserInputError(f'--distributed: no cluster detected (looked for {DETECTED}); give '
                         '--coordinator_address, --num_processes and --process_id instead') from None
  log.info('Process %d of %d (%d local devices of %d in all).', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())


T = TypeVar('T')


def process_0_first(build: Callable[[], T], what: str = 'the dataset') -> T:
  """build() in process 0 while the other processes wait, then in the others: a dataset is
  prepared once (into a shared tfds_dir: N processes building one folder at once collide), and
  the others read what process 0 wrote. The wait is a barrier every process reaches, process 0
  with its outcome, so a failed preparation stops every process with one line instead of leaving
  them waiting. One process: build().

  Raises:
    UserInputError: in processes 1.., when process 0 failed to build (its own error is raised
      in process 0 and printed there); whatever build() raises.
  """
  if jax.process_count() == 1:
    return build()
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  result, error = None, None
  if jax.process_index() == 0:
    try:
      result = build()
    except BaseException as e:  # pylint: disable=broad-except  (re-raised after the barrier)
      error = e
  ok = int(np.min(multihost_utils.process_allgather(np.int32(error is None))))
  if error is not None:
    raise error
  if not ok:
    raise UserInputError(f'process 0 could not prepare {what} (its error is in its output); '
                         'nothing was trained')
  return result if jax.process_index() == 0 else build()
