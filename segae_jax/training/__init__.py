"""The training system: pure steps (step.py), the loop (loop.py) and what the loop stands on.

  from segae_jax import training
  results = training.train_and_evaluate(config, workdir)

state.py holds TrainState; objectives.py the training methods (registered by name); step.py
train_step and eval_step; loop.py train_and_evaluate; pretrained.py a run's start from another
run's parameters; parallel.py compiles the steps with pmap or sharded jit; checkpoints.py is the
only orbax importer.
"""
from segae_jax.training.loop import train_and_evaluate
from segae_jax.training.signals import StopSignals
from segae_jax.training.checkpoints import restore_latest_intact
from segae_jax.training.objectives import OBJECTIVES
from segae_jax.training.state import (TrainState, TrainStateWithObjective, create_train_state,
                                      float32_outputs, model_variables)
from segae_jax.training.step import (build_model, eval_step, evaluate, evaluation_key,
                                     flat_scalars, loss_scale_for, run_keys, step_functions,
                                     train_step)
