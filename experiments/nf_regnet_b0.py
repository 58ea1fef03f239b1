"""NF-RegNet-B0 on ImageNet with the NFNet recipe (see nfnets/configs/nf_regnet_b0.py)."""
from nfnets.configs.nf_regnet_b0 import get_config  # pylint: disable=unused-import
