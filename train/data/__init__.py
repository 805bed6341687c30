"""Image sets: generators (MIS-synth, open-ended sets, novel views, procedures), shards, the MIS recipe, the loader."""
