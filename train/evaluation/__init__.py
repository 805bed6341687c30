"""Evaluation: generated sets against their floor and ceilings, task models, zero-shot photos, the judges' networks."""
