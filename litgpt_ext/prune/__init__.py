"""``litgpt-ext prune``: depth and width pruning of a litgpt checkpoint (the cuts live in :mod:`litgpt_ext.model.prune`)."""
