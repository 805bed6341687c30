"""Training: M2M, the tiny autoencoder and DINO encoder, the set embedder and the MIS-synth probes."""
