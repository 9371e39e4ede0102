"""The reference-voice pool: prompt voices for zero-shot TTS, read from Aishell-2 and Aishell-3."""
