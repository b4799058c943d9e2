from kamado.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
