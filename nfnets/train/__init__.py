"""Training: config schema and validation, state, checkpoints, the one train
step, the loop, metrics and preemption.

  config      `base_config()` (every field the runner reads), `validate_config`
  optimizer   the `config.optimizer` group and the optimizer it describes
  state       `TrainState`, the device mesh, model/optimizer/state builders
  checkpoint  orbax checkpoints and config files in a work directory
  step        `make_train_step` / `make_eval_step`: the steps everyone jits
  metrics     TensorBoard + JSON-lines writer, `read_metrics`
  preemption  SIGTERM -> save and stop
  loop        `train_and_evaluate(config, workdir)`
"""
from nfnets.train.config import ConfigError
from nfnets.train.loop import train_and_evaluate
from nfnets.train.state import TrainState
