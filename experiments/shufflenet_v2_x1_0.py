"""ShuffleNet v2 1.0x on ImageNet (the recipe: nfnets/configs/shufflenet.py)."""
from nfnets.configs import shufflenet

get_config = shufflenet.variant('v2_x1_0')
