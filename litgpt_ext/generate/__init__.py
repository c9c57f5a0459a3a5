"""Large-scale batch generation on litgpt models: continuous batching over streamed prompts, resumable, sharded."""
