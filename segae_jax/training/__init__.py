"""The training system: pure steps (step.py), the loop (loop.py) and what the loop stands on.

  from segae_jax import training
  results = training.train_and_evaluate(config, workdir)

step.py holds TrainState, train_step and eval_step; loop.py holds train_and_evaluate; parallel.py
compiles the steps with pmap or sharded jit; checkpoints.py is the only orbax importer.
"""
from segae_jax.training.loop import train_and_evaluate
from segae_jax.training.signals import StopSignals
from segae_jax.training.checkpoints import restore_latest_intact
from segae_jax.training.step import (TrainState, build_model, create_train_state, eval_step,
                                     evaluate, evaluation_key, flat_scalars, float32_outputs,
                                     loss_scale_for, model_variables, run_keys, step_functions,
                                     train_step)
