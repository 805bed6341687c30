"""Reproduction: data (MIS recipe, generators, shards, the loader), training and evaluation."""
