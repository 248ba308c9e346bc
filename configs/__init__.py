"""The configs of jaxattn: one get_config(arg) file per experiment.

Installed as the package jaxattn.configs, so that
``python -m jaxattn.main --config=NAME`` finds them without a checkout.
"""
