"""Installs the nfnets package: Normalizer-Free networks in JAX/Haiku."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / 'requirements.txt').read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith('#')]


setuptools.setup(
    name='nfnets',
    version='0.1.0',
    description=('Normalizer-Free networks (NF-ResNets, NF-RegNets, NFNets) '
                 'and Adaptive Gradient Clipping in JAX/Haiku.'),
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['nfnets', 'nfnets.*']),
    python_requires='>=3.10',
    install_requires=_requirements(),
    extras_require={
        # clu's metric writers already need tensorboard, so it comes with
        # the package; the extra names it for `pip install nfnets[tensorboard]`.
        'tensorboard': ['tensorboard>=2.16,<2.22'],
        'test': [
            'pytest>=7.4',
            'pytest-xdist>=3.5',
            'nbclient>=0.9',
            'nbformat>=5.9',
            'ipykernel>=6.25',
            # Writes test files the way the released NFNet weights were written.
            'dill>=0.3.3',
            # Real photographs for the input-pipeline benchmark's fake ImageNet.
            'scikit-image>=0.22,<0.27',
            'pillow>=10,<14',
        ],
        # The input-pipeline benchmark: JPEGs made from scikit-image's photos,
        # and its PIL + NumPy baseline loader.
        'benchmarks': ['scikit-image>=0.22,<0.27', 'pillow>=10,<14'],
    },
)
