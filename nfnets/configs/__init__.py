"""Training recipes shipped with the package.

Each file here defines `get_config(arg=None)` for `python -m
nfnets.experiment --config=...`; the `experiments/*.py` files users type are
one-line entries over them. Config strings after the file name
(`--config=experiments/nfnet_f0.py:ARG`) are comma-separated flags:
`runlocal` shrinks an ImageNet recipe to a smoke test on the bundled digits
that runs on a laptop CPU in about a minute; `runlocal,imagenet` shrinks it
as far but keeps the tfds ImageNet pipeline, reading ImageNet prepared in
`--config.data.data_dir` (see `nfnets.configs.common.parse_arg`).
"""
from nfnets.configs.common import digits_config
from nfnets.configs.common import imagenet_config
from nfnets.configs.common import nfnet_config
from nfnets.configs.common import parse_arg
from nfnets.configs.common import runlocal
