"""Text tokenisation with the ``tokenizers`` library, shared by training and the runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class TextTokenizer:
    """Turns prompts into (ids, mask) int64 arrays, padded to the longest prompt in the batch.

    Padding to the batch's longest prompt rather than a fixed 512 keeps the text
    encoder's cost proportional to the prompts actually given.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        if max_length < 2:
            raise ValueError(f"TextTokenizer: max_length={max_length} must be >= 2")
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = self._pad_id()

    @classmethod
    def from_file(cls, path: str | Path, max_length: int) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer.json not found")
        return cls(Tokenizer.from_file(str(path)), max_length)

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            pad = self.tokenizer.token_to_id(token)
            if pad is not None:
                return pad
        return 0

    def __call__(self, texts: list[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``texts`` → ids, mask of shape (B, L); L = ``length`` or the longest encoding."""
        encodings = self.tokenizer.encode_batch(list(texts))
        width = length or max((len(e.ids) for e in encodings), default=1)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = min(len(enc.ids), width)
            ids[row, :n] = enc.ids[:n]
            mask[row, :n] = 1
        return ids, mask

    def to_str(self) -> str:
        return self.tokenizer.to_str()
