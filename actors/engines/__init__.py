"""Engines held by stages (LLM today; TTS with the voice stages). Engines know nothing of
shards or Ray: requests in, responses out."""
