"""The optimizers of the recipes: AGC and weight decay before an update rule.

`regularized` puts AGC and weight decay in front of any optax update rule;
`nfnet_optimizer` is it over Nesterov SGD ([NFNet]), `rmsprop_optimizer` over
TensorFlow's RMSProp ([EfficientNet] Tan & Le 2019).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import optax

from nfnets.optim import agc


def clipped_mask(exclude_classifier: bool = True,
                 clip_classifier_bias: bool = False,
                 classifier_pattern: str = agc.CLASSIFIER_PATTERN
                 ) -> Optional[Callable[[agc.PyTree], agc.PyTree]]:
  """The AGC mask `regularized` uses: params -> bools, or None (clip all)."""
  if not exclude_classifier:
    return None
  return lambda params: agc.agc_mask(params, classifier_pattern,
                                     clip_classifier_bias)


def regularized(update: optax.GradientTransformation, *,
                clipping: float = 0.01, agc_eps: float = 1e-3,
                weight_decay: float = 2e-5, exclude_classifier: bool = True,
                clip_classifier_bias: bool = False,
                classifier_pattern: str = agc.CLASSIFIER_PATTERN,
                decay_norm_params: bool = False,
                caller: str = 'regularized') -> optax.GradientTransformation:
  """AGC, then weight decay, then `update`, per parameter.

    1. AGC with threshold `clipping` (skipped when 0), except the classifier
       whose Haiku module path fully matches `classifier_pattern`.
    2. + weight_decay * param, except gains and biases (`agc.is_gain_or_bias`);
       added to the clipped gradient, as the reference release does.
    3. `update`, e.g. `optax.sgd(learning_rate)`.

  Args:
    update: the update rule (it applies the learning rate).
    clipping: AGC threshold lambda; 0 turns AGC off.
    agc_eps: AGC's floor on parameter norms.
    weight_decay: L2 coefficient added to the gradient; 0 turns it off.
    exclude_classifier: leave the classifier unclipped (the paper's choice).
    clip_classifier_bias: clip the classifier bias anyway (only its weight is
      exempt), which is what the reference release does.
    classifier_pattern: regex the classifier's module path fully matches.
    decay_norm_params: decay the normalization layers' gamma and beta too
      (`agc.weight_decay_mask`), the GroupNorm paper's ResNet recipe.
    caller: the function named in error messages.

  Returns:
    The transformation; `update(grads, state, params)` needs `params`.

  Raises:
    ValueError: a negative setting.
  """
  checks = [
      (clipping >= 0, f'clipping must be >= 0 (0: no AGC), got {clipping}'),
      (agc_eps >= 0, f'agc_eps must be >= 0, got {agc_eps}'),
      (weight_decay >= 0, f'weight_decay must be >= 0, got {weight_decay}'),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f'{caller}: {message}.')
  parts = []
  if clipping > 0:
    mask = clipped_mask(exclude_classifier, clip_classifier_bias,
                        classifier_pattern)
    parts.append(agc.adaptive_grad_clip(clipping, agc_eps, mask=mask))
  if weight_decay > 0:
    mask = functools.partial(agc.weight_decay_mask,
                             decay_norm_params=decay_norm_params)
    parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
  parts.append(update)
  return optax.chain(*parts)


def _check_momentum(momentum: float, caller: str) -> None:
  if not 0 <= momentum < 1:
    raise ValueError(f'{caller}: momentum must be in [0, 1), got {momentum}.')


def nfnet_optimizer(learning_rate: Union[float, optax.Schedule], *,
                    clipping: float = 0.01, agc_eps: float = 1e-3,
                    weight_decay: float = 2e-5, momentum: float = 0.9,
                    nesterov: bool = True, exclude_classifier: bool = True,
                    clip_classifier_bias: bool = False,
                    classifier_pattern: str = agc.CLASSIFIER_PATTERN,
                    decay_norm_params: bool = False
                    ) -> optax.GradientTransformation:
  """AGC, then weight decay, then SGD with Nesterov momentum ([NFNet] sec. 4).

  `regularized` (AGC except on the classifier, then weight decay except on
  gains and biases) over SGD with `momentum` (Nesterov by default) at
  `learning_rate`.

  Clipping threshold guidance (sec. 4.1): the best lambda depends on the
  optimizer, learning rate and batch size, and larger batches need smaller
  (stronger) thresholds; NFNets use 0.01 at batch size 4096. The paper also
  finds it beneficial not to clip the final linear layer.

  Args:
    learning_rate: a constant or an optax schedule, e.g.
      `warmup_cosine_schedule(0.1 * batch_size / 256, warmup, total)`.
    clipping: AGC threshold lambda; 0 turns AGC off.
    agc_eps: AGC's floor on parameter norms.
    weight_decay: L2 coefficient added to the gradient; 0 turns it off.
    momentum: SGD momentum; 0 gives plain SGD.
    nesterov: Nesterov momentum.
    exclude_classifier: leave the classifier unclipped (the paper's choice).
    clip_classifier_bias: clip the classifier bias anyway (only its weight is
      exempt), which is what the reference release does.
    classifier_pattern: regex the classifier's module path fully matches.
    decay_norm_params: decay normalization gammas and betas too (see
      `regularized`).

  Returns:
    The transformation; `update(grads, state, params)` needs `params`.

  Raises:
    ValueError: a negative or out-of-range setting.
  """
  _check_momentum(momentum, 'nfnet_optimizer')
  return regularized(
      optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
      clipping=clipping, agc_eps=agc_eps, weight_decay=weight_decay,
      exclude_classifier=exclude_classifier,
      clip_classifier_bias=clip_classifier_bias,
      classifier_pattern=classifier_pattern,
      decay_norm_params=decay_norm_params, caller='nfnet_optimizer')


def rmsprop_optimizer(learning_rate: Union[float, optax.Schedule], *,
                      decay: float = 0.9, eps: float = 1e-3,
                      momentum: float = 0.9, clipping: float = 0.0,
                      agc_eps: float = 1e-3, weight_decay: float = 1e-5,
                      exclude_classifier: bool = True,
                      clip_classifier_bias: bool = False,
                      classifier_pattern: str = agc.CLASSIFIER_PATTERN,
                      decay_norm_params: bool = False
                      ) -> optax.GradientTransformation:
  """Weight decay (and optional AGC), then TensorFlow 1's RMSProp.

  [EfficientNet] trains with tf.train.RMSPropOptimizer(decay=0.9,
  momentum=0.9, epsilon=1e-3), whose update is
    ms <- decay * ms + (1 - decay) * g^2          (ms starts at ONE)
    mom <- momentum * mom + lr * g / sqrt(ms + eps)
    param <- param - mom
  i.e. `optax.rmsprop` with initial_scale=1 and eps inside the square root;
  PyTorch's RMSprop (ms from zero, eps outside) takes far larger first steps.
  Weight decay is the reference's L2 term: its gradient wd * param, added
  before RMSProp (gains, biases and BatchNorm's scale/offset exempt).

  Args:
    learning_rate: a constant or an optax schedule.
    decay: decay of the mean square.
    eps: added to the mean square inside the square root.
    momentum: momentum of the scaled update; 0 turns it off.
    clipping, agc_eps, weight_decay, exclude_classifier, clip_classifier_bias,
      classifier_pattern, decay_norm_params: see `regularized` (AGC is off
      by default).

  Returns:
    The transformation; `update(grads, state, params)` needs `params`.

  Raises:
    ValueError: a negative or out-of-range setting.
  """
  _check_momentum(momentum, 'rmsprop_optimizer')
  if not 0 <= decay < 1 or eps < 0:
    raise ValueError('rmsprop_optimizer: decay must be in [0, 1) and eps '
                     f'>= 0; got decay={decay}, eps={eps}.')
  update = optax.rmsprop(learning_rate, decay=decay, eps=eps,
                         initial_scale=1.0, eps_in_sqrt=True,
                         momentum=momentum or None)
  return regularized(
      update, clipping=clipping, agc_eps=agc_eps, weight_decay=weight_decay,
      exclude_classifier=exclude_classifier,
      clip_classifier_bias=clip_classifier_bias,
      classifier_pattern=classifier_pattern,
      decay_norm_params=decay_norm_params, caller='rmsprop_optimizer')
