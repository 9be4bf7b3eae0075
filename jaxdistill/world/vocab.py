"""A CLIP tokenizer folder for a closed vocabulary: the world's words, each one BPE token.

CLIP's tokenizer is byte-level BPE over words with an end-of-word marker (`</w>`); a vocabulary
of single characters, their end-of-word forms and the merges that rebuild each word makes every
listed word a single token, while any other text still tokenises (character by character).
The folder is what transformers' `CLIPTokenizer.from_pretrained` and diffusers pipelines read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence


def write_tokenizer(folder: str, words: Sequence[str], max_length: int) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json to `folder`; returns the vocabulary
    size (BOS and EOS are its last two ids)."""
    chars = sorted({c for w in words for c in w})
    vocab = chars + [c + "</w>" for c in chars]
    merges = []
    for w in words:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.append(parts[0])
    vocab = list(dict.fromkeys(vocab)) + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}, f)
    return len(vocab)
