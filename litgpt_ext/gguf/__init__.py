"""GGUF files (llama.cpp, Ollama) into litgpt checkpoints."""
