"""Hydra configs shipped with the package (a config module, so they work after `pip install .`)."""
