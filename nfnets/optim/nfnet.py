"""The optimizer NFNets are trained with: AGC, weight decay, Nesterov SGD."""
from __future__ import annotations

from typing import Union

import optax

from nfnets.optim import agc


def nfnet_optimizer(learning_rate: Union[float, optax.Schedule], *,
                    clipping: float = 0.01, agc_eps: float = 1e-3,
                    weight_decay: float = 2e-5, momentum: float = 0.9,
                    nesterov: bool = True, exclude_classifier: bool = True,
                    clip_classifier_bias: bool = False,
                    classifier_pattern: str = agc.CLASSIFIER_PATTERN
                    ) -> optax.GradientTransformation:
  """AGC, then weight decay, then SGD with Nesterov momentum ([NFNet] sec. 4).

  The chain, per parameter:
    1. AGC with threshold `clipping` (skipped when 0), except the classifier
       whose Haiku module path fully matches `classifier_pattern`.
    2. + weight_decay * param, except gains and biases (`agc.is_gain_or_bias`);
       added to the clipped gradient, as the reference release does.
    3. SGD with `momentum` (Nesterov by default) at `learning_rate`.

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

  Returns:
    The transformation; `update(grads, state, params)` needs `params`.

  Raises:
    ValueError: a negative or out-of-range setting.
  """
  checks = [
      (clipping >= 0, f'clipping must be >= 0 (0: no AGC), got {clipping}'),
      (agc_eps >= 0, f'agc_eps must be >= 0, got {agc_eps}'),
      (weight_decay >= 0, f'weight_decay must be >= 0, got {weight_decay}'),
      (0 <= momentum < 1, f'momentum must be in [0, 1), got {momentum}'),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f'nfnet_optimizer: {message}.')
  parts = []
  if clipping > 0:
    mask = None
    if exclude_classifier:
      mask = lambda params: agc.agc_mask(params, classifier_pattern,
                                         clip_classifier_bias)
    parts.append(agc.adaptive_grad_clip(clipping, agc_eps, mask=mask))
  if weight_decay > 0:
    parts.append(optax.add_decayed_weights(weight_decay,
                                           mask=agc.weight_decay_mask))
  parts.append(optax.sgd(learning_rate, momentum=momentum or None,
                         nesterov=nesterov))
  return optax.chain(*parts)
