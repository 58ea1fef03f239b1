"""EfficientNet-B4 on ImageNet with the paper's recipe (see nfnets/configs/efficientnet.py)."""
from nfnets.configs import efficientnet

get_config = efficientnet.variant('b4')
