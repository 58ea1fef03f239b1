"""NFNet-F6 on ImageNet with the paper's recipe (see nfnets/configs/nfnet.py)."""
from nfnets.configs import nfnet

get_config = nfnet.variant('f6')
