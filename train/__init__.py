"""Reproduction: data (MIS recipe, MIS-synth), loaders, training and evaluation."""
