"""NF-ResNet-50 with AGC on ImageNet (see nfnets/configs/nf_resnet50.py)."""
from nfnets.configs.nf_resnet50 import get_config  # pylint: disable=unused-import
