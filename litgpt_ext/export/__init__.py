"""Merge + Hugging Face export: litgpt checkpoints that transformers, peft and the Hub load as-is."""
