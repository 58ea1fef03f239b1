"""Optax transforms of the NFNet papers; they know nothing of configs.

`adaptive_grad_clip` (AGC) works on any pytree of arrays; `nfnet_optimizer`
chains it with weight decay and Nesterov SGD, `rmsprop_optimizer` with weight
decay and TensorFlow's RMSProp (EfficientNet), both through `regularized`;
`warmup_cosine_schedule`, `warmup_exponential_schedule` and
`warmup_linear_schedule` are the recipes' learning rates; `agc_mask` /
`weight_decay_mask` select parameters by Haiku module path and name;
`clip_fraction` is AGC's diagnostic, the share of units it clips;
`sam_gradient` is SAM's descent gradient, taken at `ascent_point`, for any
of these optimizers.
"""
from nfnets.optim.agc import adaptive_grad_clip
from nfnets.optim.agc import agc_mask
from nfnets.optim.agc import CLASSIFIER_PATTERN
from nfnets.optim.agc import clip_fraction
from nfnets.optim.agc import is_classifier
from nfnets.optim.agc import is_gain_or_bias
from nfnets.optim.agc import module_and_name
from nfnets.optim.agc import path_mask
from nfnets.optim.agc import weight_decay_mask
from nfnets.optim.nfnet import clipped_mask
from nfnets.optim.nfnet import nfnet_optimizer
from nfnets.optim.nfnet import regularized
from nfnets.optim.nfnet import rmsprop_optimizer
from nfnets.optim.sam import ascent_point
from nfnets.optim.sam import sam_gradient
from nfnets.optim.schedules import warmup_cosine_schedule
from nfnets.optim.schedules import warmup_exponential_schedule
from nfnets.optim.schedules import warmup_linear_schedule
