"""ECA-NFNet-L0 on ImageNet (see nfnets/configs/eca_nfnet.py)."""
from nfnets.configs import eca_nfnet

get_config = eca_nfnet.variant('l0')
