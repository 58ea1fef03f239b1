"""ShuffleNet v2 0.5x on ImageNet (the recipe: nfnets/configs/shufflenet.py)."""
from nfnets.configs import shufflenet

get_config = shufflenet.variant('v2_x0_5')
