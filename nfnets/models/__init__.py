"""Model families and the registry.

>>> import haiku as hk, nfnets.models
>>> fwd = hk.transform_with_state(nfnets.models.create('nfnet_f0', num_classes=10))
"""
from nfnets.models.cost import count_macs
from nfnets.models.cost import count_params
from nfnets.models.registry import accepted_overrides
from nfnets.models.registry import create
from nfnets.models.registry import get_spec
from nfnets.models.registry import list_models
from nfnets.models.registry import register
from nfnets.models.registry import transform
from nfnets.pretrained import load_pretrained
