"""Training recipes shipped with the package.

Each file here defines `get_config(arg=None)` for `python -m
nfnets.experiment --config=...`; the `experiments/*.py` files users type are
one-line entries over them. Config strings after the file name
(`--config=experiments/nfnet_f0.py:ARG`) are comma-separated flags;
`runlocal` shrinks a config to a smoke test that runs on a laptop CPU in
about a minute.
"""
from nfnets.configs.common import digits_config
from nfnets.configs.common import imagenet_config
from nfnets.configs.common import nfnet_config
from nfnets.configs.common import parse_arg
from nfnets.configs.common import runlocal
