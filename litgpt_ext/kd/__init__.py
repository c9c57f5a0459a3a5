"""Logit distillation support: the top-k store of teacher log-probs, the vocabulary check, and the commands that
write (``distill_logprobs``) and measure (``evaluate_kd``) them. The loss is :mod:`litgpt_ext.training.objectives.kd`."""
