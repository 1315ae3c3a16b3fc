"""Tokenizers described by a model file: byte level (vocabulary 256) or a Hugging Face
``tokenizer.json`` (through the optional ``tokenizers`` package)."""

from __future__ import annotations

import codecs

__all__ = ["Tokenizer", "TokenizerError"]


class TokenizerError(Exception):
    """The model's tokenizer can't be used here (one line, for the CLI)."""


class Tokenizer:
    def __init__(self, description: dict, vocab_size: int):
        kind = description.get("type")
        self.vocab_size = vocab_size
        self.bos = None
        self._hf = None
        if kind == "bytes":
            if vocab_size != 256:
                raise TokenizerError(f"a byte-level tokenizer needs vocab_size 256, "
                                     f"not {vocab_size}")
        elif kind == "hf":
            try:
                import tokenizers
            except ImportError:
                raise TokenizerError("this model needs the 'tokenizers' package: "
                                     "python -m pip install -e \".[tokenizers]\"") from None
            self._hf = tokenizers.Tokenizer.from_str(description["tokenizer_json"])
            self.bos = description.get("bos_token_id")
        else:
            raise TokenizerError(f"unknown tokenizer type {kind!r}")
        self.kind = kind

    def encode(self, text: str) -> list[int]:
        if self._hf is None:
            return list(text.encode("utf-8"))
        ids = self._hf.encode(text, add_special_tokens=False).ids
        return ([self.bos] if self.bos is not None else []) + ids

    def decoder(self):
        """An incremental decoder: ``feed(token) -> str`` returns the text that became
        complete with that token (UTF-8 sequences split across byte tokens are held back)."""
        if self._hf is None:
            inc = codecs.getincrementaldecoder("utf-8")(errors="replace")
            return lambda token: inc.decode(bytes([token]))
        ids: list[int] = []
        shown = [0]

        def feed(token: int) -> str:
            ids.append(token)
            text = self._hf.decode(ids)
            if text.endswith("\ufffd"):      # an incomplete multi-byte character
                return ""
            new, shown[0] = text[shown[0]:], len(text)
            return new
        return feed

    def decode(self, tokens) -> str:
        feed = self.decoder()
        return "".join(feed(t) for t in tokens)
