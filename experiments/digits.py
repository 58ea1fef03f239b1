"""The default config: a small NFNet on the bundled digits (nfnets/configs/digits.py)."""
from nfnets.configs.digits import get_config  # pylint: disable=unused-import
