"""ShuffleNet v1 1x (g=2) on ImageNet (the recipe: nfnets/configs/shufflenet.py)."""
from nfnets.configs import shufflenet

get_config = shufflenet.variant('v1_g2')
