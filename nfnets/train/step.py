"""The one training step and the one evaluation step.

`make_train_step(config, model, optimizer)` is what the runner, the
benchmarks, the studies and the tests all run, jitted by one function,
`compile_train_step`: forward in the configured compute dtype,
label-smoothed (and MixUp/CutMix-mixed) cross-entropy, the configured
optimizer (AGC, weight decay, Nesterov SGD), and the EMA of the weights.

The gradients are a composition of small wrappers (`make_gradients`):
`plain_gradients` of the loss; `sam_gradients` for SAM ([SAM] Foret et al.
2021, `nfnets.optim.sam`), taken at an ascent point found from a fraction
of each device's shard; `per_device` to run that ascent on each device's
shard alone; `accumulated` to average over micro-batches (gradient
accumulation).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jmp
import ml_collections
import optax

from nfnets import data
from nfnets import optim
from nfnets.train import optimizer as optimizer_config
from nfnets.train import state as state_lib

Batch = Mapping[str, jax.Array]
TrainStep = Callable[[state_lib.TrainState, Batch],
                     tuple[state_lib.TrainState, dict[str, jax.Array]]]
EvalStep = Callable[[hk.Params, hk.State, Batch], dict[str, jax.Array]]


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay warmed up as min(decay, (1 + t) / (10 + t)) ([NFNet] appendix).

  Early on the average follows the weights closely, so the EMA weights are
  useful long before 1 / (1 - decay) steps have passed.
  """
  t = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def _ema(decay: jax.Array, average: Any, value: Any) -> Any:
  def update(a, v):
    if not jnp.issubdtype(v.dtype, jnp.floating):
      return v  # Counters and other integer state are copied, not averaged.
    return (decay * a + (1.0 - decay) * v).astype(v.dtype)
  return jax.tree.map(update, average, value)


def targets_of(batch: Batch, num_classes: int,
               label_smoothing: float) -> jax.Array:
  """Smoothed one-hot targets [B, num_classes] of a (possibly mixed) batch.

  With MixUp/CutMix the target is r * onehot(labels) + (1 - r) *
  onehot(mix_labels); label smoothing then maps t to
  (1 - eps) * t + eps / num_classes.
  """
  targets = jax.nn.one_hot(batch['labels'], num_classes)
  if 'mix_labels' in batch:
    ratio = batch['mix_ratio'][:, None]
    targets = (ratio * targets +
               (1.0 - ratio) * jax.nn.one_hot(batch['mix_labels'], num_classes))
  return optax.smooth_labels(targets, label_smoothing)


def topk_hits(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """bool [B]: whether each label is among its row's `k` largest logits."""
  return jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)


def _policy(config: ml_collections.ConfigDict) -> jmp.Policy:
  return jmp.get_policy(
      f'params=float32,compute={config.training.compute_dtype},output=float32')


def ascent_size(shard_size: int, fraction: float) -> int:
  """Examples of a shard SAM's ascent uses: round(fraction * size), >= 1."""
  return max(1, min(shard_size, int(round(fraction * shard_size))))


def ascent_batch(batch: Batch, fraction: float, num_shards: int = 1) -> Batch:
  """The first `ascent_size` examples of each of `num_shards` equal shards.

  On a batch split over `num_shards` devices each device keeps the first
  examples of its own shard, so the ascent pass is balanced over the devices
  and moves no data. With one shard this is the first `fraction` of the batch.
  """
  def take(x):
    shards = x.reshape(num_shards, -1, *x.shape[1:])  # [D, B / D, ...]
    k = ascent_size(shards.shape[1], fraction)
    return shards[:, :k].reshape(-1, *x.shape[1:])  # [D * k, ...]
  return jax.tree.map(take, batch)


def _device_mean(x: jax.Array) -> jax.Array:
  """The mean over the data axis of a float; others (counters) are equal."""
  if jnp.issubdtype(x.dtype, jnp.floating):
    return jax.lax.pmean(x, state_lib.DATA_AXIS)
  return jax.lax.pmax(x, state_lib.DATA_AXIS)


class Aux(NamedTuple):
  """What a gradient pass reports besides the gradients.

  Attributes:
    loss: the mean smoothed cross-entropy of the batch, float32 [].
    model_state: the model state after the pass (BatchNorm statistics).
    top1: the share of the batch whose argmax is its label, float32 [].
  """
  loss: jax.Array
  model_state: hk.State
  top1: jax.Array


# gradients(params, model_state, rng, batch) -> (grads like params, Aux).
Gradients = Callable[[hk.Params, hk.State, jax.Array, Batch],
                     tuple[hk.Params, Aux]]
# loss_fn(params, model_state, rng, batch) -> (loss, (model_state, top1)).
LossFn = Callable[[hk.Params, hk.State, jax.Array, Batch],
                  tuple[jax.Array, tuple[hk.State, jax.Array]]]


def plain_gradients(loss_fn: LossFn) -> Gradients:
  """The gradients of `loss_fn` at the weights, on the whole batch."""
  def gradients(params, model_state, rng, batch):
    (loss, (model_state, top1)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, model_state, rng, batch)
    return grads, Aux(loss, model_state, top1)
  return gradients


def sam_gradients(gradients: Gradients, rho: float, batch_fraction: float,
                  num_shards: int = 1,
                  axis_name: Optional[str] = None) -> Gradients:
  """SAM's descent gradients ([SAM] eq. 2, `nfnets.optim.sam_gradient`).

  `gradients` at the ascent point w + rho * g / ||g||, g from the first
  `batch_fraction` of each of the batch's `num_shards` device shards; the
  loss, top-1 and model state are the descent pass's. With `axis_name`
  (inside `per_device`) each device ascends from its own shard and the
  descent gradients are averaged over that axis.
  """
  def as_grad_fn(params, inputs):
    return gradients(params, *inputs)

  def sam(params, model_state, rng, batch):
    # The ascent pass draws its own dropout / stochastic-depth masks.
    ascent = (model_state, jax.random.fold_in(rng, 1),
              ascent_batch(batch, batch_fraction, num_shards))
    grads, aux, _ = optim.sam_gradient(
        as_grad_fn, params, rho, ascent, (model_state, rng, batch),
        axis_name=axis_name)
    return grads, aux
  return sam


def per_device(gradients: Gradients, mesh: jax.sharding.Mesh) -> Gradients:
  """`gradients` on each device's shard, in a `jax.shard_map` over `mesh`.

  `gradients` runs with the data axis bound and must return gradients
  already averaged over it (`sam_gradients(..., axis_name=DATA_AXIS)`).
  Each device draws its own masks, as it would on its part of the batch;
  loss and top-1 are averaged over the devices, and so is the model state
  (BatchNorm statistics, which are per device here).
  """
  def on_one_device(params, model_state, rng, batch):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(state_lib.DATA_AXIS))
    grads, aux = gradients(params, model_state, rng, batch)
    loss, top1 = jax.lax.pmean((aux.loss, aux.top1), state_lib.DATA_AXIS)
    return grads, Aux(loss, jax.tree.map(_device_mean, aux.model_state), top1)

  spec = jax.sharding.PartitionSpec
  return jax.shard_map(
      on_one_device, mesh=mesh,
      in_specs=(spec(), spec(), spec(), spec(state_lib.DATA_AXIS)),
      out_specs=spec())


def micro_batches(batch: Batch, steps: int) -> Batch:
  """[B, ...] leaves -> [steps, B / steps, ...]: micro-batch j is batch[j::k].

  Strided rather than contiguous: on a batch sharded over D devices in
  contiguous blocks, every micro-batch then takes B / (steps * D) examples
  from each device, so no example moves between devices.
  """
  def split(x):
    return jnp.swapaxes(x.reshape(-1, steps, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def accumulated(gradients: Gradients, steps: int) -> Gradients:
  """`gradients` averaged over `steps` equal micro-batches of the batch.

  The mean of the micro-batches' mean-loss gradients is the gradient of the
  whole batch's mean loss, so an update sees the k-times larger batch while
  only one micro-batch's activations are alive at a time (`jax.lax.scan`).
  Micro-batch j draws its masks from `fold_in(rng, j)`. MixUp/CutMix pairs
  are made by the input pipeline before the split, with their mixed labels,
  so they are those of the large batch. A BatchNorm model normalizes each
  micro-batch by its own statistics and updates its moving averages once per
  micro-batch, in order, as it would over `steps` smaller steps.
  """
  if steps == 1:
    return gradients

  def accumulate(params, model_state, rng, batch):
    def body(carry, inputs):
      grads_sum, loss_sum, top1_sum, model_state = carry
      index, micro = inputs
      grads, aux = gradients(params, model_state,
                             jax.random.fold_in(rng, index), micro)
      grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
      return (grads_sum, loss_sum + aux.loss, top1_sum + aux.top1,
              aux.model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
            model_state)
    (grads, loss, top1, model_state), _ = jax.lax.scan(
        body, init, (jnp.arange(steps), micro_batches(batch, steps)))
    grads = jax.tree.map(lambda g: g / steps, grads)
    return grads, Aux(loss / steps, model_state, top1 / steps)
  return accumulate


def make_gradients(config: ml_collections.ConfigDict,
                   model: hk.TransformedWithState,
                   mesh: Optional[jax.sharding.Mesh] = None) -> Gradients:
  """The gradient computation `config` asks for, composed from the wrappers.

  Plain gradients of the smoothed cross-entropy in the compute dtype; with
  `optimizer.sam_rho > 0` SAM's (`sam_gradients`), per device with
  `optimizer.sam_per_device` (`per_device`); averaged over
  `training.accumulation_steps` micro-batches (`accumulated`).
  """
  tc = config.training
  num_classes = data.num_classes(config.data)
  policy = _policy(config)
  oc = optimizer_config.with_defaults(config.optimizer)

  def loss_fn(params, model_state, rng, batch):
    # Parameters are cast per step, so the float32 master copy gets the
    # gradients; model state (e.g. BN averages) stays float32.
    logits, model_state = model.apply(
        policy.cast_to_compute(params), model_state, rng,
        policy.cast_to_compute(batch['images']), is_training=True)
    logits = policy.cast_to_output(logits)  # [B, num_classes]
    targets = targets_of(batch, num_classes, tc.label_smoothing)
    loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    top1 = jnp.mean(jnp.argmax(logits, -1) == batch['labels'])
    return loss, (model_state, top1)

  gradients = plain_gradients(loss_fn)
  if oc.sam_rho > 0:
    mesh = state_lib.make_mesh() if mesh is None else mesh
    if oc.sam_per_device:
      gradients = per_device(
          sam_gradients(gradients, oc.sam_rho, oc.sam_batch_fraction,
                        axis_name=state_lib.DATA_AXIS), mesh)
    else:
      gradients = sam_gradients(gradients, oc.sam_rho, oc.sam_batch_fraction,
                                num_shards=mesh.shape[state_lib.DATA_AXIS])
  return accumulated(gradients, tc.get('accumulation_steps', 1))


def make_train_step(config: ml_collections.ConfigDict,
                    model: hk.TransformedWithState,
                    optimizer: optax.GradientTransformation,
                    mesh: Optional[jax.sharding.Mesh] = None) -> TrainStep:
  """The pure training step of `config`: gradients, optimizer, EMA.

  The returned `train_step(state, batch) -> (state, metrics)` takes a global
  batch {'images': [B, H, W, 3], 'labels': [B] (, 'mix_labels', 'mix_ratio')}
  and returns scalar metrics: 'loss' (smoothed cross-entropy), 'top1'
  (against `labels`), 'grad_norm' (global L2 norm before clipping),
  'param_norm' (global L2 norm of the updated weights) and, when AGC is on,
  'agc_clip_fraction' (the share of clipped units, [NFNet] sec. 4.1). With
  `training.ema_decay = 0` no average is kept: the EMA fields carry the
  weights themselves.

  The gradients are `make_gradients(config, model, mesh)`'s: with
  `optimizer.sam_rho > 0` (SAM) taken at the ascent point w + rho * g /
  ||g||, g the gradient of the first `optimizer.sam_batch_fraction` of each
  device's shard at w, and 'loss', 'top1', 'grad_norm' and the model state
  from that second, whole-batch pass (the loss SAM minimizes); with
  `optimizer.sam_per_device` each device ascends from its own shard
  (BatchNorm statistics are then per device); with
  `training.accumulation_steps = k` averaged over k micro-batches.

  Args:
    config: the run config.
    model: the transformed model.
    optimizer: the optimizer of `config.optimizer`.
    mesh: the 1-D data mesh the step is jitted over; SAM reads its device
      count (default: every device, the runner's mesh).
  """
  tc = config.training
  oc = optimizer_config.with_defaults(config.optimizer)
  clip_mask = optim.clipped_mask(oc.agc_exclude_classifier,
                                 oc.agc_clip_classifier_bias,
                                 oc.classifier_pattern)
  gradients = make_gradients(config, model, mesh)

  def train_step(state: state_lib.TrainState, batch: Batch):
    rng, step_rng = jax.random.split(state.rng)
    grads, (loss, model_state, top1) = gradients(
        state.params, state.model_state, step_rng, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if tc.ema_decay > 0:
      decay = ema_decay_at(state.step, tc.ema_decay)
      ema_params = _ema(decay, state.ema_params, params)
      ema_state = _ema(decay, state.ema_state, model_state)
    else:
      ema_params, ema_state = params, model_state
    new_state = state_lib.TrainState(
        step=state.step + 1, params=params, model_state=model_state,
        opt_state=opt_state, ema_params=ema_params, ema_state=ema_state,
        rng=rng)
    metrics = {'loss': loss, 'top1': top1,
               'grad_norm': optax.tree.norm(grads),
               'param_norm': optax.tree.norm(params)}
    if oc.clipping > 0:
      metrics['agc_clip_fraction'] = optim.clip_fraction(
          grads, state.params, oc.clipping, oc.agc_eps, mask=clip_mask)
    return new_state, metrics

  return train_step


def compile_train_step(train_step: TrainStep, mesh: jax.sharding.Mesh
                       ) -> TrainStep:
  """`train_step` jitted over `mesh`: what the runner, benchmarks and studies run.

  The state is replicated and donated (its buffers are reused for the new
  state), the batch is split over the data axis, and the metrics come back
  replicated. Compiled at the first call, or ahead with `.lower().compile()`.
  """
  replicated = state_lib.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated,
                                           state_lib.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def compile_eval_step(eval_step: EvalStep, mesh: jax.sharding.Mesh
                      ) -> EvalStep:
  """`eval_step` jitted over `mesh`: weights replicated, batch split."""
  replicated = state_lib.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(replicated, replicated,
                                          state_lib.batch_sharded(mesh)),
                 out_shardings=replicated)


def make_eval_step(config: ml_collections.ConfigDict,
                   model: hk.TransformedWithState) -> EvalStep:
  """`eval_step(params, model_state, batch) -> sums over the batch`.

  The batch is {'images', 'labels', 'mask'}; padded rows (mask False) count
  nowhere. Returns the sums of 'loss' (cross-entropy), 'top1' and 'top5'
  (correct predictions) and 'count' (valid rows). The same compiled step
  serves the raw and the EMA weights.
  """
  k = min(5, data.num_classes(config.data))
  policy = _policy(config)

  def eval_step(params, model_state, batch):
    logits, _ = model.apply(
        policy.cast_to_compute(params), model_state, None,
        policy.cast_to_compute(batch['images']), is_training=False)
    logits = policy.cast_to_output(logits)  # [B, num_classes]
    labels, mask = batch['labels'], batch['mask']
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    top1 = jnp.argmax(logits, -1) == labels
    topk = topk_hits(logits, labels, k)
    return {'loss': jnp.sum(jnp.where(mask, loss, 0.0)),
            'top1': jnp.sum(top1 & mask), 'top5': jnp.sum(topk & mask),
            'count': jnp.sum(mask)}

  return eval_step
