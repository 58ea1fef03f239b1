"""High-order CIFAR ResNets (the recipe: nfnets/configs/ho_resnet_cifar.py)."""
from nfnets.configs import ho_resnet_cifar

get_config = ho_resnet_cifar.get_config
