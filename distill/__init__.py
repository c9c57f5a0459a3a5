"""distill: the data side of the toolchain — teacher queries, conversion to litgpt JSON, pre-tokenization."""
