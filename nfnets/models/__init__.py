"""Model families and the registry.

Importing this package imports every family module, each of which registers
its variants (`list_models()` names them).

>>> import haiku as hk, nfnets.models
>>> fwd = hk.transform_with_state(nfnets.models.create('nfnet_f0', num_classes=10))
>>> tiny = nfnets.models.transform('nfnet_f0', depth=(1, 2, 1, 1), width=0.0625)
"""
# Each family registers its variants when imported.
from nfnets.models import nfnet
from nfnets.models import nf_resnet
from nfnets.models import nf_regnet
from nfnets.models import baselines
from nfnets.models import efficientnet
from nfnets.models import mnasnet
from nfnets.models import shufflenet
from nfnets.models import attention
from nfnets.models import eca_nfnet
from nfnets.models import ho_resnet
from nfnets.models.common import Activations
from nfnets.models.cost import abstract_init
from nfnets.models.cost import count_macs
from nfnets.models.cost import count_params
from nfnets.models.registry import accepted_overrides
from nfnets.models.registry import create
from nfnets.models.registry import get_spec
from nfnets.models.registry import list_models
from nfnets.models.registry import ModelSpec
from nfnets.models.registry import register
from nfnets.models.registry import transform
