"""BPE tokenizer speed: training time, encoding MB/s, and tiktoken on the same ranks.

    python benchmarks/bpe_speed.py                    # vocab 1024 on the bundled Tiny Shakespeare
    python benchmarks/bpe_speed.py --vocab-size 4096 --data other.txt

Encoding is timed twice: "cold" on a fresh tokenizer (every distinct chunk
is merged once, then served from the cache) and "warm" (all chunks cached).
tiktoken gets the same pattern, ranks and special tokens, encodes with one
thread (`encode`, not `encode_batch`) and must produce the same ids.
"""
import argparse
import importlib.resources
import sys
import time

from npgpt.tokenizers.bpe import BPETokenizer, learn_merges


def best_of(repeats, fn):
    """(fastest wall time in seconds, result of the last call)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="UTF-8 text (default: the bundled Tiny Shakespeare)")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.data:
        with open(args.data, encoding="utf-8") as f:
            text = f.read()
    else:
        text = importlib.resources.files("npgpt").joinpath("corpora", "tinyshakespeare.txt").read_text("utf-8")
    n_bytes = len(text.encode("utf-8"))
    print(f"text: {n_bytes:,} bytes; vocab_size {args.vocab_size}; best of {args.repeats}")

    seconds, tok = best_of(args.repeats, lambda: BPETokenizer.train(text, args.vocab_size))
    count_s, chunks = best_of(args.repeats, lambda: BPETokenizer._count_chunks(text, tuple(tok.special_tokens), tok.pattern))
    merge_s, _ = best_of(args.repeats, lambda: learn_merges(chunks, len(tok.merges)))
    print(f"train: {seconds:.2f} s  (split + count {len(chunks):,} distinct chunks {count_s:.2f} s, "
          f"{len(tok.merges)} merges {merge_s:.2f} s)")

    cold_s, ids = best_of(args.repeats, lambda: BPETokenizer.from_dict(tok.to_dict()).encode(text))
    warm_s, _ = best_of(args.repeats, lambda: tok.encode(text))
    print(f"encode: cold {n_bytes / cold_s / 1e6:.2f} MB/s, warm {n_bytes / warm_s / 1e6:.2f} MB/s "
          f"({len(ids):,} tokens, {n_bytes / len(ids):.2f} bytes/token)")

    try:
        import tiktoken
    except ImportError:
        print("tiktoken not installed: no comparison")
        return 0
    enc = tiktoken.Encoding(name="bench", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks(),
                            special_tokens=tok.special_tokens)
    tik_s, tik_ids = best_of(args.repeats, lambda: enc.encode(text))
    if tik_ids != ids:
        print("MISMATCH: tiktoken gives different ids", file=sys.stderr)
        return 1
    print(f"tiktoken: {n_bytes / tik_s / 1e6:.2f} MB/s, same ids; npgpt/tiktoken speed ratio: "
          f"cold {tik_s / cold_s:.2f}, warm {tik_s / warm_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
