"""Data-parallel strategies: `pmap` over local devices, or `jit` over a NamedSharding mesh.

Both take the same pure step functions `train_step(state, batch, rng, axis_name=None)` and
`eval_step(state, batch, rng, axis_name=None)`, and give the same parameters as one device on the
same global batch:
  - 'pmap': state replicated per device (leading device axis), batches [devices, per_device, ...],
    gradients and metrics averaged with lax.pmean over axis 'batch' inside the step.
  - 'jit':  one program over a ('data',) mesh of all devices, batch sharded along its first axis,
    state replicated; XLA inserts the all-reduce. This is pmap's successor in current JAX and the
    one that scales to multi-host meshes.
"""
import functools
import logging
from typing import Callable, Dict, Optional

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from segae_jax.errors import UserInputError

log = logging.getLogger(__name__)

STRATEGIES = ('pmap', 'jit')
AXIS_NAME = 'batch'


class _Strategy:
  """What both strategies share; subclasses define fetch(tree) -> host numpy."""

  @property
  def sync_each_step(self) -> bool:
    return _cpu_collectives_need_sync()

  def scalars(self, metrics) -> Dict[str, float]:
    """Step metrics -> host floats."""
    return {k: float(v) for k, v in self.fetch(metrics).items()}


class PmapStrategy(_Strategy):
  """jax.pmap over jax.local_devices(); see the module docstring."""

  name = 'pmap'

  def __init__(self, train_step: Callable, eval_step: Callable):
    self.num_local_devices = jax.local_device_count()
    self.batch_sharding = NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS_NAME,)),
                                        P(AXIS_NAME))
    # The state argument is donated: its buffers are reused for the new state.
    self.train_step = jax.pmap(functools.partial(train_step, axis_name=AXIS_NAME),
                               axis_name=AXIS_NAME, in_axes=(0, 0, None), donate_argnums=(0,))
    self.eval_step = jax.pmap(functools.partial(eval_step, axis_name=AXIS_NAME),
                              axis_name=AXIS_NAME, in_axes=(0, 0, None))

  @property
  def device_axis_size(self) -> Optional[int]:
    """The size of the leading device axis host batches carry: pipelines reshape them to
    [local devices, per_device, ...] (None for a strategy that takes flat batches)."""
    return self.num_local_devices

  def replicate(self, state):
    return flax.jax_utils.replicate(jax.device_get(state))

  def unreplicate(self, state):
    return flax.jax_utils.unreplicate(state)

  def put_batch(self, batch: Dict[str, np.ndarray]):
    """Host [devices, per_device, ...] arrays -> one shard per local device, in pmap's device
    order, so pmap starts without a copy (and a prefetched batch is already in place)."""
    return jax.device_put(batch, self.batch_sharding)

  def fetch(self, tree):
    """Per-device identical (pmean'd / psum'd) values -> host numpy, device axis dropped."""
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(tree))

  def checkpoint_state(self, state):
    """The state as saved: one host copy. Orbax cannot save pmap's per-process device arrays
    in a multi-process run, and numpy arrays are written once, by process 0."""
    return jax.device_get(self.unreplicate(state))

  def restore_sharding(self):
    return None  # Restored as host numpy, then replicated.


def data_mesh() -> Mesh:
  """The ('data',) mesh of every device of every process, ordered for the interconnect by
  jax.experimental.mesh_utils.create_device_mesh (TPU slices and GPU hosts: neighbours in the
  ring its collectives use); jax.devices() in order where it refuses a device set."""
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  try:
    devices = mesh_utils.create_device_mesh((jax.device_count(),))
  except (ValueError, NotImplementedError, AssertionError) as error:
    log.info('mesh_utils refused the devices (%s): the flat device list is the mesh.', error)
    devices = np.asarray(jax.devices())
  return Mesh(devices, ('data',))


class JitStrategy(_Strategy):
  """jax.jit with the batch sharded over a ('data',) mesh of all devices; see the module docstring."""

  name = 'jit'

  def __init__(self, train_step: Callable, eval_step: Callable):
    self.mesh = data_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P('data'))
    self.train_step = jax.jit(train_step, in_shardings=(self.replicated, self.data_sharding,
                                                        self.replicated),
                              out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))
    self.eval_step = jax.jit(eval_step, in_shardings=(self.replicated, self.data_sharding,
                                                      self.replicated),
                             out_shardings=self.replicated)

  device_axis_size = None  # Flat [batch, ...] batches; jit shards them over the mesh.

  def replicate(self, state):
    return jax.device_put(jax.device_get(state), self.replicated)

  def unreplicate(self, state):
    return state

  def put_batch(self, batch: Dict[str, np.ndarray]):
    # Each process passes its own slice; together they form the global batch.
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(self.data_sharding, v), batch)

  def fetch(self, tree):
    """Replicated values -> host numpy (this process's copy: across processes a replicated
    array is not fully addressable, but every copy is the same)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def checkpoint_state(self, state):
    """The state as saved: the replicated global arrays (orbax writes one replica)."""
    return state

  def restore_sharding(self):
    return self.replicated


def _cpu_collectives_need_sync() -> bool:
  """XLA:CPU runs every virtual device's part of a step on one shared thread pool. With several
  steps queued (asynchronous dispatch) and more devices than cores, the parts of two steps can
  hold all the threads while waiting in an all-reduce for a part that cannot start: a deadlock
  seen here with 4 forced devices on 2 cores. Waiting for each step before dispatching the next
  avoids it; on accelerators dispatch stays asynchronous."""
  return jax.local_devices()[0].platform == 'cpu' and jax.local_device_count() > 1


def norm_axis_name(name: str) -> Optional[str]:
  """The axis BatchNorm averages its batch statistics over under strategy `name`: pmap's device
  axis (each device sees a shard); None under sharded jit, where the batch is already global."""
  return AXIS_NAME if name == 'pmap' else None


def make_strategy(name: str, train_step: Callable, eval_step: Callable):
  """Builds the strategy `name` ('pmap' or 'jit') around pure step functions."""
  if name == 'pmap':
    return PmapStrategy(train_step, eval_step)
  if name == 'jit':
    return JitStrategy(train_step, eval_step)
  raise UserInputError(f'unknown config.parallel {name!r}; known: {", ".join(STRATEGIES)}')


def check_batch_divisible(batch_size: int, what: str = 'config.batch_size',
                          multiple: int = 1) -> None:
  """Raises UserInputError unless batch_size splits evenly over all devices of all processes,
  into shares that are each a multiple of `multiple`."""
  devices, processes = jax.device_count(), jax.process_count()
  if batch_size % (devices * multiple):
    each = f' into multiples of {multiple}' if multiple > 1 else ''
    raise UserInputError(
        f'{what}={batch_size} is not divisible by the {devices} devices{each} '
        f'({jax.local_device_count()} local x {processes} processes); use a multiple of '
        f'{devices * multiple}')
