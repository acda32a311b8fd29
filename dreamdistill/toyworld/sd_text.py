"""toy-sd's text side: a CLIP byte-level BPE vocabulary learned on the toy captions, and paraphrased captions.

The tokenizer is the exact class Stable Diffusion uses (``transformers.CLIPTokenizer``), with its own vocabulary:
the 256 byte symbols (with and without the end-of-word mark ``</w>``, as in CLIP, so any text tokenizes), merges
learned by byte-pair encoding on the training words until each is one token, then the two special tokens.
A word outside the training text falls back to smaller pieces, never to an unknown token.

The UNet trains on paraphrases of the caption "a {colour} {category}, {view} view" (:func:`paraphrase`), so the
text encoder learns to read the colour, category and view words wherever they stand, and to pass over filler
words. :data:`HELD_OUT_TEMPLATES` and :data:`HELD_OUT_FILLERS` are never trained on: the teacher benchmark scores
them, to measure robustness to wordings it has not seen.
"""

from __future__ import annotations

import random
from collections import Counter

from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS

START, END = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"

TRAINING_TEMPLATES = (
    "a {colour} {category}, {view} view",
    "a {filler} {colour} {category}, {view} view",
    "{view} view of a {colour} {category}",
    "a {colour} {category} seen from the {seen}",
    "a photo of a {colour} {category}, {view} view",
    "the {colour} {category}, {view} view",
    "{colour} {category}, {view} view",
    "a {colour} {category} in {view} view",
    "a {filler} {colour} {category} from the {seen}",
)
HELD_OUT_TEMPLATES = (
    "an image of a {filler} {colour} {category}, {view} view",
    "{view} view: one {colour} {category}",
    "a picture showing a {colour} {category} ({view} view)",
)
TRAINING_FILLERS = ("small", "big", "little", "large", "tiny", "nice", "simple", "toy", "cute", "plain", "new",
                    "old", "round", "tall", "short", "pretty", "solid", "single", "clean", "lovely")
HELD_OUT_FILLERS = ("shiny", "modern", "charming", "sturdy", "neat")
SEEN_FROM = {"front": "front", "side": "side", "back": "back", "overhead": "top"}
"""The word after "seen from the" for each view (the caption parser reads "top" as overhead too)."""


def paraphrase(colour: str, category: str, view: str, rng: random.Random, canonical_share: float = 0.5,
               templates: tuple[str, ...] = TRAINING_TEMPLATES, fillers: tuple[str, ...] = TRAINING_FILLERS) -> str:
    """One wording of (colour, category, view): the training caption with probability ``canonical_share``, else a
    random template with a random filler word."""
    template = templates[0] if rng.random() < canonical_share else rng.choice(templates)
    return template.format(colour=colour, category=category, view=view, seen=SEEN_FROM[view],
                           filler=rng.choice(fillers))


def corpus_words() -> Counter:
    """Word frequencies of every training wording (what the BPE merges are learned on)."""
    words: Counter = Counter()
    for template in TRAINING_TEMPLATES:
        for filler in TRAINING_FILLERS:
            for colour in COLOURS:
                for category in CATEGORIES:
                    for view in VIEWS:
                        text = template.format(colour=colour, category=category, view=view, seen=SEEN_FROM[view],
                                               filler=filler)
                        words.update(split_words(text))
    return words


def split_words(text: str) -> list[str]:
    """Lower-case words and punctuation runs, as CLIP's pre-tokenizer splits ASCII text."""
    import re

    return re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-symbol table: printable bytes map to themselves, the rest to code points from 256."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def learn_merges(words: Counter) -> list[tuple[str, str]]:
    """Byte-pair encoding: repeatedly merge the most frequent adjacent pair (ties: the smaller pair) until every
    word is a single symbol. Words are sequences of characters, the last one marked with ``</w>``."""
    pieces = {word: [*word[:-1], word[-1] + WORD_END] for word in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for word, symbols in pieces.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += words[word]
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def build_tokenizer(max_length: int = 16):
    """A ``CLIPTokenizer`` whose vocabulary is the byte symbols, the learned merges and the special tokens."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    merges = learn_merges(corpus_words())
    tokens = symbols + [s + WORD_END for s in symbols] + [a + b for a, b in merges] + [START, END]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
