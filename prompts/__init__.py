"""Versioned prompt templates (data files) and their loader; the LLM stages add them."""
