"""MnasNet-B1 on ImageNet with the paper's recipe (see nfnets/configs/mnasnet.py)."""
from nfnets.configs import mnasnet

get_config = mnasnet.variant('b1')
