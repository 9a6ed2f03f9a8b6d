"""L1 sparse autoencoders with a leading instances dimension, trained with Lightning.

This package works on anyone's activations: it never imports ``toymodels``.
"""
