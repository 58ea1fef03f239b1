"""Command lines: thin layers of argument parsing over the libraries.

`python -m nfnets.experiment` (training), `python -m nfnets.evaluate` and
`python -m nfnets.spp` run the modules here; nothing in the libraries
imports them.
"""
