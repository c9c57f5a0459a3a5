"""Talking to a teacher LLM through the ``openai`` client: live (async, rate-limited, cached) or the Batch API."""
