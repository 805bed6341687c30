# The design the architecture table chose (docs/open-sets.md §9), as training flags: sourced by the scripts that
# train the shipped models on (scripts/train_on_cpu.sh, scripts/gpu_run.sh). Empty: the paper's model. Both go on
# from the shipped weights (--init), so only flags that change no weight's shape belong here: --reference-images,
# --context-tokens, --recent-context-images, --older-context-tokens, the recipe's (--lr ...); a new width
# (--unet-width) or encoder size (--image-encoder-size) means a model trained from scratch instead.
SELF_DESIGN=${SELF_DESIGN-}
SELF_TAG=${SELF_TAG-self}  # the ledger's name for the model that design trains
DINO_DESIGN=${DINO_DESIGN-}
DINO_TAG=${DINO_TAG-dino}
