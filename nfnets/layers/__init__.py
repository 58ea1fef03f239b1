"""Normalizer-Free layers and the convolution backend they run on.

`nf` holds the layers of the papers (Scaled WS convolutions, gamma-scaled
activations, Squeeze-Excite, stochastic depth, SkipInit gains), `eca`
Efficient Channel Attention, `high_order` the Runge-Kutta stacking of
residual sub-blocks (Butcher tableaux and the block executor); `conv` holds
the per-backend formulations of the convolution and of weight
standardization. This package imports nothing else from `nfnets` but its
errors.
"""
from nfnets.layers.conv import Conv2D
from nfnets.layers.conv import GROUPED_CONV_IMPLS
from nfnets.layers.conv import grouped_conv2d
from nfnets.layers.conv import STANDARDIZE_IMPLS
from nfnets.layers.conv import standardize_weight
from nfnets.layers.eca import ECA
from nfnets.layers.eca import eca_kernel_size
from nfnets.layers.high_order import ButcherTableau
from nfnets.layers.high_order import get_tableau
from nfnets.layers.high_order import stacked
from nfnets.layers.high_order import stage_variances
from nfnets.layers.high_order import TABLEAUX
from nfnets.layers.high_order import UnknownTableauError
from nfnets.layers.nf import Activation
from nfnets.layers.nf import avg_pool_2x2
from nfnets.layers.nf import estimate_gamma
from nfnets.layers.nf import GAMMAS
from nfnets.layers.nf import maybe_remat
from nfnets.layers.nf import PrestandardizedConv2D
from nfnets.layers.nf import raw_activation
from nfnets.layers.nf import scaled_activation
from nfnets.layers.nf import skip_gain
from nfnets.layers.nf import SqueezeExcite
from nfnets.layers.nf import standardize_conv_params
from nfnets.layers.nf import StochDepth
from nfnets.layers.nf import WSConv2D
