"""Engines held by stages (LLM today; TTS with the voice stages). Engines know nothing of
shards or Ray: requests in, responses out."""


class EngineUnavailable(RuntimeError):
    """The engine cannot answer now (endpoint down, retries exhausted). Unlike a bad row,
    this fails the whole micro-batch, which stays uncommitted and is redone on resume."""
