# The design the architecture table chose (docs/open-sets.md §9), as training flags: sourced by the scripts that
# train the shipped models on (scripts/train_on_cpu.sh, scripts/gpu_run.sh). Empty: the paper's model. Both go on
# from the shipped weights (--init), so only flags that change no weight's shape belong here: --reference-images,
# --context-tokens, --recent-context-images, --older-context-tokens, the recipe's (--lr ...); a new width
# (--unet-width) or encoder size (--image-encoder-size) means a model trained from scratch instead.
# M2M-Self: reference attention to the 2 most recent context images, which led rounds 1-2 of the table (context
# gain 17.2 % against 12.2 % at equal images, held-out colour 0.656 against 0.484), with older images pooled harder
# so that the cost of a new image stays flat. Revisit when the table's last rounds are scored.
# Balanced latent channels (round 5: colour 0.609 against 0.438 on open:simple at equal images) change the latents
# the UNet denoises, not a weight: they are for a model trained from scratch (--vae of a latent_stats folder).
SELF_DESIGN=${SELF_DESIGN---reference-images 2 --recent-context-images 4 --older-context-tokens 16}
SELF_TAG=${SELF_TAG-self-reference}  # the ledger's name for the model that design trains
DINO_DESIGN=${DINO_DESIGN-}
DINO_TAG=${DINO_TAG-dino}
