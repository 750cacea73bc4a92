"""Byte-level BPE, GPT-2 style, token for token equal to tiktoken.

    tok = BPETokenizer.train(text, vocab_size=1024)   # 256 bytes + 767 merges + <|endoftext|>
    tok.encode("hello world")          -> a list of ids
    tok.decode(tok.encode(s)) == s     for every string s
    tok = BPETokenizer.from_gpt2_files("encoder.json", "vocab.bpe")   # GPT-2's own tokenizer

How it works (docs/tokenizer.md has the long version):
1. Text is cut into chunks by GPT-2's split regex (words with their
   leading space, numbers, punctuation runs, whitespace), so no token ever
   spans two words.
2. Each chunk is turned into UTF-8 bytes: 256 base tokens cover every
   string, so there is no unknown token.
3. Training repeatedly fuses the most frequent adjacent pair of tokens into
   a new token.  Encoding replays that: it fuses the adjacent pair with the
   lowest rank (the earliest-learned token) until no pair is a token.

Ids: the 256 single bytes come first, in GPT-2's order (the printable
bytes '!'..'~', then the rest; see `BYTE_ORDER`), then one id per merge in
the order learned, then the special tokens.  An id is also the token's
rank, as in tiktoken, so `mergeable_ranks()` can be handed to
`tiktoken.Encoding` and GPT-2's `encoder.json` ids are kept as they are.
"""
import heapq
import json
import numbers
import os
from collections import Counter

import regex

from .. import safeload
from ..errors import UserError
from ..fileio import atomic_write_bytes
from .split import GPT2_SPLIT_PATTERN, check_split_pattern  # GPT-2's pattern; the check every loaded one passes

ENDOFTEXT = "<|endoftext|>"
FORMAT_VERSION = 1
_CACHE_LIMIT = 200_000  # chunks remembered by encode before the cache is cleared


class SpecialTokenError(UserError):
    """Text given to `encode` holds a special token that was not allowed.

    `token` and `position` (a character index) say which and where, so a
    caller can word its own advice."""

    def __init__(self, message, token, position):
        super().__init__(message)
        self.token = token
        self.position = position


def _gpt2_byte_order():
    """GPT-2's order of the 256 bytes: printable ones first, then the rest."""
    printable = [b for b in range(256) if chr(b).isprintable() and b != ord(" ")]
    return printable + [b for b in range(256) if b not in printable]


BYTE_ORDER = _gpt2_byte_order()                  # id -> byte value, for ids 0..255
BYTE_ID = {b: i for i, b in enumerate(BYTE_ORDER)}  # byte value -> id


def bytes_to_unicode():
    """GPT-2's map from each byte to a visible character, used in its files.

    Printable bytes stand for themselves; the 68 others (space, control
    bytes, ...) are shifted to chr(256), chr(257), ... in byte order, so a
    token's bytes are always a printable, space-free string:

    >>> m = bytes_to_unicode()
    >>> m[ord("a")], m[ord(" ")], m[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    shifted = iter(range(256, 512))
    return {b: chr(b) if BYTE_ID[b] < 188 else chr(next(shifted)) for b in range(256)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_str(token: bytes) -> str:
    """A token's bytes in GPT-2's file notation: token_to_str(b" the") -> 'Ġthe'."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(s: str) -> bytes:
    """The inverse of token_to_str: str_to_token('Ġthe') -> b' the'. KeyError on foreign characters."""
    return bytes(CHAR_TO_BYTE[c] for c in s)


def merge(ids, pair, new_id):
    """Replace every occurrence of `pair` in `ids`, left to right, by `new_id`.

    >>> merge([1, 2, 3, 1, 2], (1, 2), 4)
    [4, 3, 4]
    >>> merge([5, 5, 5], (5, 5), 6)      # overlapping: the left pair wins
    [6, 5]
    """
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def pair_counts(ids, weight=1, counts=None):
    """Add `weight` to counts[(a, b)] for each adjacent pair of `ids`.

    >>> pair_counts([1, 2, 3, 1, 2])
    {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    """
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def bpe(piece: bytes, ranks: dict) -> list:
    """Encode one chunk's bytes with the ranks: repeatedly fuse the adjacent
    pair whose concatenation is the lowest-ranked token (the leftmost one on
    a tie), until no adjacent pair is a token.  This is tiktoken's rule.

    >>> bpe(b"aaab", {b"a": 0, b"b": 1, b"aa": 2, b"ab": 3})
    [2, 3]

    (a a a b -> aa a b, because aa has the lower rank; then aa ab.)  The
    parts form a linked list and candidate merges sit in a heap, so a long
    chunk costs O(n log n), not O(n^2).
    """
    n = len(piece)
    end = list(range(1, n + 1))   # end[i]: where the part starting at byte i stops
    prev = list(range(-1, n - 1))  # prev[i]: start of the part before it (-1: none)
    alive = [True] * n            # does a part start at byte i?
    heap = []

    def push(i):  # offer the merge of the part at i with the part after it
        j = end[i]
        if j < n:
            rank = ranks.get(piece[i:end[j]])
            if rank is not None:
                heapq.heappush(heap, (rank, i, end[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, stop = heapq.heappop(heap)
        if not alive[i] or end[i] >= n or end[end[i]] != stop:
            continue  # stale: one of the two parts has changed since
        alive[end[i]] = False  # the right part joins the left one
        end[i] = stop
        if stop < n:
            prev[stop] = i
        if prev[i] >= 0:
            push(prev[i])  # the new part with its left neighbour
        push(i)            # and with its right one
    return [ranks[piece[i:end[i]]] for i in range(n) if alive[i]]


def learn_merges(chunk_counts, num_merges):
    """The `num_merges` most useful merges for chunks of byte ids with counts.

    `chunk_counts` maps a tuple of ids to how often it occurs.  Each step
    fuses the most frequent adjacent pair (ties: the smaller ids) into a new
    id, 256, 257, ...  Pairs whose bytes would repeat an existing token are
    skipped, so every token has its own bytes.  Only the chunks holding the
    chosen pair are touched: their old pairs are subtracted from the counts
    and their new pairs added.  Returns [(left id, right id), ...].

    >>> a, b, c, d = (BYTE_ID[ord(x)] for x in "abcd")
    >>> learn_merges({tuple(BYTE_ID[x] for x in b"aaabdaaabac"): 1}, 3) == [(a, a), (a, b), (256, 257)]
    True
    """
    chunks = [list(ids) for ids in chunk_counts]
    weights = list(chunk_counts.values())
    counts = {}  # pair -> weighted number of occurrences
    where = {}   # pair -> indices of chunks that hold (or once held) it
    for w, ids in enumerate(chunks):
        pair_counts(ids, weights[w], counts)
        for pair in zip(ids, ids[1:]):
            where.setdefault(pair, set()).add(w)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    vocab = {i: bytes([b]) for i, b in enumerate(BYTE_ORDER)}
    known = set(vocab.values())
    merges = []
    while len(merges) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg_count or neg_count == 0:
            continue  # stale entry: the count has changed and was pushed again
        token = vocab[pair[0]] + vocab[pair[1]]
        if token in known:
            continue  # would duplicate a token; rank must identify bytes
        new_id = len(vocab)
        vocab[new_id] = token
        known.add(token)
        merges.append(pair)
        changed = set()
        for w in where.pop(pair):
            old = chunks[w]
            new = merge(old, pair, new_id)
            if len(new) == len(old):
                continue  # the pair left this chunk in an earlier merge
            for p in zip(old, old[1:]):
                counts[p] -= weights[w]
                changed.add(p)
            for p in zip(new, new[1:]):
                counts[p] = counts.get(p, 0) + weights[w]
                where.setdefault(p, set()).add(w)
                changed.add(p)
            chunks[w] = new
        del counts[pair]
        changed.discard(pair)
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
    return merges


class BPETokenizer:
    """Byte-level BPE: merges (learned or GPT-2's), special tokens, a split pattern."""

    def __init__(self, merges, special_tokens=(ENDOFTEXT,), pattern=GPT2_SPLIT_PATTERN):
        """merges: [(left bytes, right bytes), ...] in rank order; special_tokens: a
        sequence of strings (ids follow the merges) or a {string: id} dict."""
        self._ranks = {bytes([b]): i for i, b in enumerate(BYTE_ORDER)}
        self.merges = []  # [(left id, right id), ...]
        for n, (left, right) in enumerate(merges):
            if left not in self._ranks or right not in self._ranks:
                raise UserError(f"merge {n + 1} ({left!r}, {right!r}) uses a token no earlier merge made")
            if left + right in self._ranks:
                raise UserError(f"merge {n + 1} ({left!r}, {right!r}) makes a token that already exists")
            self.merges.append((self._ranks[left], self._ranks[right]))
            self._ranks[left + right] = len(self._ranks)
        self.special_tokens = self._number_specials(special_tokens, len(self._ranks))
        self._decoder = {i: token for token, i in self._ranks.items()}
        self._decoder.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self._cache = {}
        self.pattern = pattern
        self._splitter = check_split_pattern(pattern)  # untrusted: may not hang or drop text

    @staticmethod
    def _number_specials(special_tokens, first_id):
        if isinstance(special_tokens, dict):
            specials = dict(special_tokens)
        else:
            specials = {s: first_id + i for i, s in enumerate(special_tokens)}
            if len(specials) != len(special_tokens):
                raise UserError(f"special tokens must be distinct, got {list(special_tokens)}")
        for s, i in specials.items():
            if not isinstance(s, str) or not s:
                raise UserError(f"a special token must be a non-empty string, got {s!r}")
            if not isinstance(i, int) or isinstance(i, bool) or i < first_id:
                raise UserError(f"special token {s!r} has id {i!r}; ids below {first_id} belong to byte and merge tokens")
        if len(set(specials.values())) != len(specials):
            raise UserError(f"special tokens share an id: {specials}")
        return specials

    # ---- training ----------------------------------------------------------

    @classmethod
    def train(cls, text, vocab_size, special_tokens=(ENDOFTEXT,), pattern=GPT2_SPLIT_PATTERN):
        """Learn vocab_size - 256 - len(special_tokens) merges from `text`.

        Special tokens in the text mark document boundaries: they are cut
        out before counting, so no merge ever spans one.
        """
        special_tokens = (special_tokens,) if isinstance(special_tokens, str) else tuple(special_tokens)
        cls._number_specials(special_tokens, 256)  # validate before the slow part
        check_split_pattern(pattern)
        smallest = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < smallest:
            raise UserError(f"vocab_size must be an integer of at least {smallest} "
                            f"(256 byte tokens + {len(special_tokens)} special), got {vocab_size!r}")
        if not isinstance(text, str) or not text:
            raise UserError("cannot train a BPE tokenizer on empty text")
        num_merges = vocab_size - smallest
        text = _replace_surrogates(text)
        merges = learn_merges(cls._count_chunks(text, special_tokens, pattern), num_merges)
        if len(merges) < num_merges:
            raise UserError(f"the text is too small for vocab_size {vocab_size}: it allows only {len(merges)} "
                            f"merges, so at most vocab_size {smallest + len(merges)}")
        vocab = [bytes([b]) for b in BYTE_ORDER]
        for left, right in merges:
            vocab.append(vocab[left] + vocab[right])
        return cls([(vocab[a], vocab[b]) for a, b in merges], special_tokens, pattern)

    @staticmethod
    def _count_chunks(text, special_tokens, pattern):
        """{chunk as a tuple of byte ids: count}: each distinct chunk is counted once.

        >>> BPETokenizer._count_chunks("ab ab", (), GPT2_SPLIT_PATTERN) == {(64, 65): 1, (188 + 32, 64, 65): 1}
        True
        """
        splitter = check_split_pattern(pattern)
        parts = [text]
        if special_tokens:
            parts = regex.split(_alternation(special_tokens), text)
        counts = Counter()
        for part in parts:
            counts.update(splitter.split(part))
        byte_id = BYTE_ID
        return {tuple(byte_id[b] for b in chunk.encode("utf-8")): n for chunk, n in counts.items()}

    # ---- the tokenizer interface -------------------------------------------

    @property
    def vocab_size(self):
        """Number of ids: bytes, merges and special tokens (one more than the largest id)."""
        return max([len(self._ranks) - 1, *self.special_tokens.values()]) + 1

    def mergeable_ranks(self):
        """{token bytes: id} for every non-special token: tiktoken's `mergeable_ranks`."""
        return dict(self._ranks)

    def encode_ordinary(self, text):
        """str -> ids, treating special-token text as ordinary text."""
        cache = self._cache
        ids = []
        try:
            for chunk in self._splitter.split(text):
                piece_ids = cache.get(chunk)
                if piece_ids is None:
                    piece_ids = self._encode_chunk(chunk)
                ids.extend(piece_ids)
        except UnicodeEncodeError:  # lone surrogates: replace them with U+FFFD, as tiktoken does
            return self.encode_ordinary(_replace_surrogates(text))
        return ids

    def _encode_chunk(self, chunk):
        piece = chunk.encode("utf-8")
        rank = self._ranks.get(piece)
        piece_ids = (rank,) if rank is not None else tuple(bpe(piece, self._ranks))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[chunk] = piece_ids
        return piece_ids

    def encode(self, text, *, allowed_special=frozenset(), disallowed_special="all"):
        """str -> list[int], with tiktoken's rules for special tokens.

        By default text containing a special token (e.g. "<|endoftext|>") is
        refused with a UserError, because a user's text that is silently
        turned into a control token is a bug (or an injection).  Pass
        allowed_special={"<|endoftext|>"} or "all" to encode it as its
        special id, or disallowed_special=() to encode it as ordinary text.
        """
        allowed = self._special_names(allowed_special, "allowed_special")
        if disallowed_special == "all":
            disallowed = set(self.special_tokens) - allowed
        else:
            disallowed = self._special_names(disallowed_special, "disallowed_special")
        if disallowed:
            found = regex.search(_alternation(disallowed), text)
            if found:
                raise SpecialTokenError(
                    f"the text contains the special token {found.group()!r} (at character {found.start()}); "
                    f"pass allowed_special={{{found.group()!r}}} to encode it "
                    "as a special token, "
                    "or disallowed_special=() to encode it as ordinary text", found.group(), found.start())
        if not allowed:
            return self.encode_ordinary(text)
        ids = []
        parts = regex.split(f"({_alternation(allowed)})", text)
        for k, part in enumerate(parts):  # odd k: a special token, even k: the text between
            ids.extend([self.special_tokens[part]] if k % 2 else self.encode_ordinary(part))
        return ids

    def _special_names(self, names, argument):
        if names == "all":
            return set(self.special_tokens)
        names = {names} if isinstance(names, str) else set(names)
        unknown = names - self.special_tokens.keys()
        if unknown:
            raise UserError(f"{argument} names {sorted(unknown)}, which are not special tokens "
                            f"of this tokenizer (it has {sorted(self.special_tokens)})")
        return names

    def decode_bytes(self, ids):
        """ids -> the bytes they stand for."""
        decoder = self._decoder
        try:
            return b"".join(decoder[i] for i in ids)
        except (KeyError, TypeError):
            bad = next(i for i in ids if not _hashable(i) or i not in decoder)
            shown = int(bad) if isinstance(bad, numbers.Integral) else repr(bad)
            raise UserError(f"unknown token id {shown} (this tokenizer has ids 0..{self.vocab_size - 1})") from None

    def decode(self, ids):
        """ids -> str.  A cut through a multi-byte character (possible when
        decoding part of a sequence) shows as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self):
        """JSON-ready and human-readable: merges in GPT-2's notation ("Ġ t" = b' ' + b't')."""
        vocab = [bytes([b]) for b in BYTE_ORDER]
        merges = []
        for left, right in self.merges:
            merges.append(f"{token_to_str(vocab[left])} {token_to_str(vocab[right])}")
            vocab.append(vocab[left] + vocab[right])
        return {"type": "bpe", "version": FORMAT_VERSION, "vocab_size": self.vocab_size, "pattern": self.pattern,
                "special_tokens": dict(self.special_tokens), "merges": merges}

    @classmethod
    def from_dict(cls, d):
        """Rebuild from `to_dict()`; UserError naming the problem if `d` is not one."""
        if not isinstance(d, dict) or d.get("type") != "bpe":
            raise UserError("not a saved BPE tokenizer (expected a JSON object with \"type\": \"bpe\")")
        if d.get("version") != FORMAT_VERSION:
            raise UserError(f"unsupported BPE tokenizer format version {d.get('version')!r} (expected {FORMAT_VERSION})")
        merges, specials, pattern = d.get("merges"), d.get("special_tokens"), d.get("pattern")
        if not isinstance(merges, list) or not isinstance(specials, dict) or not isinstance(pattern, str):
            raise UserError("corrupt BPE tokenizer: needs \"merges\" (a list), \"special_tokens\" (an object) and \"pattern\" (a string)")
        tok = cls(_parse_merges(merges, "merges"), specials, pattern)
        if d.get("vocab_size", tok.vocab_size) != tok.vocab_size:
            raise UserError(f"corrupt BPE tokenizer: it says vocab_size {d['vocab_size']!r} but its merges and "
                            f"special tokens make {tok.vocab_size}")
        return tok

    # ---- files ---------------------------------------------------------------

    def save(self, path):
        """Write the tokenizer as JSON (one merge per line, readable in an editor)."""
        d = self.to_dict()
        head = {k: v for k, v in d.items() if k != "merges"}
        lines = json.dumps(head, ensure_ascii=False, indent=1)[:-2]  # reopen the object to add merges last
        body = ",\n".join("  " + json.dumps(m, ensure_ascii=False) for m in d["merges"])
        _write_atomically(path, f"{lines},\n \"merges\": [\n{body}\n ]\n}}\n")

    @classmethod
    def load(cls, path):
        """Read a file written by `save`; UserError if missing or corrupt."""
        if not os.path.exists(path):
            raise UserError(f"tokenizer file not found: {path}")
        try:
            d = safeload.load_json(path, what=str(path))
        except UserError as e:  # size, depth, encoding or syntax: say it in the usual words
            reason = str(e).removeprefix(f"{path}: ")
            raise UserError(f"{path} is not a tokenizer file (invalid JSON: {reason})") from None
        try:
            return cls.from_dict(d)
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

    def save_gpt2(self, directory):
        """Write GPT-2's two files, `encoder.json` (token -> id) and `vocab.bpe`
        (the merges, one per line), into `directory`.  tiktoken's loader
        (`data_gym_to_mergeable_bpe_ranks`) reads them; Hugging Face's
        vocab.json + merges.txt have the same format.  The split pattern is
        not stored, as in GPT-2."""
        os.makedirs(directory, exist_ok=True)
        encoder = {token_to_str(token): i for token, i in sorted(self._ranks.items(), key=lambda kv: kv[1])}
        encoder.update(self.special_tokens)
        merges = self.to_dict()["merges"]
        _write_atomically(os.path.join(directory, "encoder.json"), json.dumps(encoder, ensure_ascii=False) + "\n")
        _write_atomically(os.path.join(directory, "vocab.bpe"), "#version: 0.2\n" + "".join(m + "\n" for m in merges))

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe, pattern=GPT2_SPLIT_PATTERN):
        """GPT-2's tokenizer from its `encoder.json` and `vocab.bpe` (or Hugging
        Face's `vocab.json` and `merges.txt`).  Entries of encoder.json that no
        merge makes (like "<|endoftext|>") become special tokens."""
        for name in (encoder_json, vocab_bpe):
            if not os.path.exists(name):
                raise UserError(f"GPT-2 tokenizer file not found: {name}")
        encoder = safeload.load_json(encoder_json, safeload.Map(int), what=f"GPT-2 encoder.json {encoder_json}")
        try:
            with open(vocab_bpe, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError as e:
            raise UserError(f"GPT-2 tokenizer file not found: {e.filename}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{vocab_bpe} is not a GPT-2 vocab.bpe ({type(e).__name__})") from None
        if not isinstance(encoder, dict):
            raise UserError(f"{encoder_json} is not a GPT-2 encoder.json (expected a JSON object)")
        lines = [line for line in lines if line and not line.startswith("#version")]
        return cls.from_encoder(encoder, lines, encoder_json, vocab_bpe, pattern)

    @classmethod
    def from_encoder(cls, encoder, merge_lines, vocab_where, merges_where=None, pattern=GPT2_SPLIT_PATTERN):
        """{token string: id} + merge lines ("a b") -> a tokenizer, by GPT-2's rule: the merges fix
        the ranks, and vocabulary entries that no merge makes become special tokens.

        vocab_where, merges_where: the files they came from, for error messages (one file, such
        as a `tokenizers` tokenizer.json, may hold both).
        """
        merges_where = merges_where or vocab_where
        try:
            tok = cls(_parse_merges(merge_lines, merges_where), {}, pattern)
        except UserError as e:
            raise UserError(f"{merges_where}: {e}") from None
        ranks = tok._ranks
        specials = {}
        for key, i in encoder.items():
            token = _try_str_to_token(key)
            if token is not None and token in ranks:
                if ranks[token] != i:
                    raise UserError(f"{vocab_where} gives {key!r} id {i!r} but {merges_where} implies {ranks[token]}: "
                                    "only files whose ids follow the merge order (as GPT-2's do) are supported")
            else:
                specials[key] = i
        if len(encoder) - len(specials) != len(ranks):
            raise UserError(f"{vocab_where} lacks {len(ranks) - len(encoder) + len(specials)} of the tokens "
                            f"{merges_where} makes")
        try:
            tok.special_tokens = cls._number_specials(specials, len(ranks))
        except UserError as e:
            raise UserError(f"{vocab_where}: {e}") from None
        tok._decoder.update({i: s.encode("utf-8") for s, i in tok.special_tokens.items()})
        return tok

    def __repr__(self):
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")


def _replace_surrogates(text):
    """Lone surrogates (not encodable as UTF-8) become U+FFFD, as in tiktoken."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _alternation(strings):
    """A regex matching any of `strings`, longest first."""
    return "|".join(regex.escape(s) for s in sorted(strings, key=len, reverse=True))


def _hashable(x):
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _try_str_to_token(s):
    try:
        return str_to_token(s)
    except KeyError:
        return None


def _parse_merges(lines, where):
    """["Ġ t", ...] -> [(b" ", b"t"), ...]; UserError naming the bad line."""
    merges = []
    for n, line in enumerate(lines):
        parts = line.split(" ") if isinstance(line, str) else None
        try:
            if parts is None or len(parts) != 2:
                raise KeyError
            merges.append((str_to_token(parts[0]), str_to_token(parts[1])))
        except KeyError:
            raise UserError(f"corrupt BPE tokenizer: merge {n + 1} in {where} is {line!r}, "
                            "expected two tokens in GPT-2's notation separated by one space") from None
    return merges


def _write_atomically(path, text):
    """Write UTF-8 text so that a crash never leaves half a file (see npgpt.fileio)."""
    atomic_write_bytes(path, text.encode("utf-8"))
