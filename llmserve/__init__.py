"""llmserve: LLM-first model serving (spec, storage, workers, CLI; gateway/ and controller/ sit beside it)."""

__version__ = "0.1.0"
