"""Reproduction: data (MIS recipe, generators, shards, the loader), training and evaluation.

Every script runs from the repository root both as a module (`python -m train.data.synth --help`) and
by its path (`python train/data/synth.py --help`): run by path, a script puts the repository root in
place of its own folder at the head of `sys.path`, as `python -m` has it.
"""
