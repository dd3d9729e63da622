"""The training system: pure steps (step.py), the loop (loop.py) and what the loop stands on.

  from segae_jax import training
  results = training.train_and_evaluate(config, workdir)

state.py holds TrainState; objectives/ the training methods (registered by name); step.py
train_step and eval_step; evaluation.py evaluate (a split's exact metrics); metrics.py the
device metrics and how they are written; loop.py train_and_evaluate; pretrained.py a run's start
from another run's parameters; parallel.py compiles the steps with pmap or sharded jit;
checkpoints.py is the only orbax importer. The model a config describes (build_model) and the
native-resolution scores come from the inference layer below (segae_jax.inference).
"""
from segae_jax.training.loop import train_and_evaluate
from segae_jax.training.signals import StopSignals
from segae_jax.training.checkpoints import restore_latest_intact
from segae_jax.training.objectives import OBJECTIVES
from segae_jax.training.state import (TrainState, TrainStateWithObjective, create_train_state,
                                      float32_outputs, model_variables)
from segae_jax.training.step import (eval_step, evaluation_key, loss_scale_for, run_keys,
                                     step_functions, train_step)
from segae_jax.training.evaluation import evaluate
from segae_jax.training.metrics import flat_scalars
# The model a config describes: built in the inference layer, which scores and restores it too.
from segae_jax.inference.model import build_model
