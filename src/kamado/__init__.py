"""kamado: build Japanese-proficient LLMs from the ground up (PLaMo-100B recipe)."""

__version__ = "0.1.0"
