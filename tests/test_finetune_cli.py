"""The README's "Fine-tune GPT-2" commands, run as written on a tiny random GPT-2 folder.

transformers builds the folder (GPT2LMHeadModel(GPT2Config(...)).save_pretrained)
and npgpt writes its tokenizer files (vocab.json + merges.txt), standing in
for the real `gpt2` folder the README downloads.  Each `npgpt ...` line of the
README's block runs in-process, with `gpt2` and `my.txt` replaced by the tiny
folder and a small text, and with flags appended only to make training short.
Skipped without transformers (and torch).
"""
import os
import re
import shlex

import numpy as np
import pytest

from npgpt import checkpoint
from npgpt.cli import main
from npgpt.data import load_text
from npgpt.tokenizers.bpe import BPETokenizer

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
SHORT = ["--max-iters", "4", "--eval-interval", "2", "--eval-iters", "2", "--batch-size", "2", "--block-size", "32",
         "--backend", "numpy", "--sample-tokens", "0", "--no-progress"]  # appended to each `npgpt train`


def readme_commands():
    """The `npgpt ...` lines of the README's "Fine-tune GPT-2" section, comments dropped."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Fine-tune GPT-2", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("npgpt ")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A working directory holding `gpt2` (a random 3-layer GPT-2 with a BPE tokenizer) and `my.txt`."""
    root = tmp_path_factory.mktemp("finetune")
    text = load_text()[:30_000]
    tokenizer = BPETokenizer.train(text, vocab_size=300, special_tokens=["<|endoftext|>"])
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=32, n_positions=64, vocab_size=tokenizer.vocab_size,
                                     bos_token_id=tokenizer.vocab_size - 1, eos_token_id=tokenizer.vocab_size - 1)
    transformers.GPT2LMHeadModel(config).save_pretrained(root / "gpt2")
    tokenizer.save_gpt2(root / "gpt2")
    os.replace(root / "gpt2" / "encoder.json", root / "gpt2" / "vocab.json")  # Hugging Face's names, same format
    os.replace(root / "gpt2" / "vocab.bpe", root / "gpt2" / "merges.txt")
    (root / "my.txt").write_text(load_text()[-20_000:], encoding="utf-8")
    return root


def run_readme(folder, capsys):
    """Run every README command in folder -> {output directory: stdout of its command}."""
    outputs = {}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for argv in readme_commands():
            args = argv[1:] + (SHORT if argv[1] == "train" else [])
            if argv[1] == "sample":
                args += ["--max-new-tokens", "8"]  # the last --max-new-tokens wins: keep sampling short
            status = main(args)
            out, err = capsys.readouterr()
            assert status == 0, f"{shlex.join(argv)} failed: {err}"
            where = args[args.index("--out") + 1] if "--out" in args else args[args.index("--to") + 1] \
                if "--to" in args else shlex.join(argv)
            outputs[where] = out
    finally:
        os.chdir(cwd)
    return outputs


def test_the_readmes_fine_tuning_commands_work_as_written(folder, capsys):
    commands = readme_commands()
    trains = [c for c in commands if c[1] == "train"]
    assert [c[c.index("--out") + 1] for c in trains] == ["ft", "ft-frozen", "ft-lora"]  # distinct outputs
    assert any(c[1] == "export" and "--merge-lora" in c for c in commands)
    run_readme(folder, capsys)
    from npgpt.pretrained import load

    pretrained = load(str(folder / "gpt2")).model.params
    full = checkpoint.load(str(folder / "ft"), "latest")
    frozen = checkpoint.load(str(folder / "ft-frozen"), "latest")
    lora = checkpoint.load(str(folder / "ft-lora"), "latest")
    # full fine-tuning moves every tensor (the position table cropped to --block-size)
    assert all(not np.array_equal(full.params[n], p[: full.params[n].shape[0]]) for n, p in pretrained.items())
    assert full.optimizer["m"].size == sum(p.size for p in full.params.values())
    # --freeze all-but-last:2 of 3 blocks: block 0 and the embeddings stay bit for bit, blocks 1-2 and ln_f move
    for name, p in pretrained.items():
        still = np.array_equal(frozen.params[name], p[: frozen.params[name].shape[0]])
        assert still == (name.startswith(("h.0.", "wte.", "wpe."))), name
    # LoRA: only adapters move, and the optimizer holds their moments alone
    adapters = {n: v for n, v in lora.params.items() if ".lora_" in n}
    assert adapters and all(np.array_equal(lora.params[n], p[: lora.params[n].shape[0]]) for n, p in pretrained.items())
    assert lora.optimizer["m"].size == sum(v.size for v in adapters.values())


def test_a_lora_export_loads_in_transformers_with_the_same_logits(folder, capsys, tmp_path):
    if not (folder / "ft-lora").exists():
        run_readme(folder, capsys)
    for flags, out in [(["--lora-rank", "4"], "lora4"), (["--freeze", "all-but-last:1"], "last1")]:
        assert main(["train", "--init-from", str(folder / "gpt2"), "--data", str(folder / "my.txt"),
                     "--out", str(tmp_path / out), "--lr", "1e-2", *flags, *SHORT]) == 0, capsys.readouterr().err
    assert main(["export", "--ckpt", str(tmp_path / "lora4"), "--to", str(tmp_path / "hf"), "--merge-lora"]) == 0
    from npgpt.pretrained import load

    tuned = load(str(tmp_path / "lora4"), dtype="float64", backend="numpy").model
    assert np.any(tuned.params["h.0.attn.c_attn.lora_b"] != 0)  # the adapters trained, so merging matters
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["unexpected_keys"] and set(info["missing_keys"]) <= {"lm_head.weight"}
    idx = np.random.default_rng(0).integers(0, tuned.config.vocab_size, (2, 16))
    ours = tuned.logits(idx)
    with torch.no_grad():
        theirs = hf.double().eval()(torch.from_numpy(idx)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    sample = "ROMEO:\nWhat light through yonder window breaks?"
    tok = load(str(tmp_path / "lora4")).tokenizer
    assert hf_tok(sample)["input_ids"] == tok.encode(sample)


def test_init_from_a_hugging_face_folder_reads_its_config_and_refuses_in_one_line(folder, capsys, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(folder / "gpt2", bare)
    for name in ("vocab.json", "merges.txt"):
        os.remove(bare / name)
    data = str(folder / "my.txt")
    cases = [([str(bare)], "fine-tuning needs its tokenizer"),
             ([str(folder / "gpt2"), "--block-size", "128"], "larger than the model's block_size 64"),
             ([str(folder / "gpt2"), "--n-layer", "2"], "fixes the model: it has n-layer=3"),
             ([str(folder / "gpt2"), "--tokenizer", "char"], "fixes the model: it has tokenizer=bpe")]
    for args, phrase in cases:
        capsys.readouterr()
        assert main(["train", "--data", data, "--out", str(tmp_path / "t"), "--init-from", *args, "--max-iters", "1",
                     "--backend", "numpy", "--sample-tokens", "0", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert phrase in err and len(err.strip().splitlines()) == 1, err
    # the model's context (n_positions 64) is the default --block-size, below the cap of 256
    assert main(["train", "--data", data, "--out", str(tmp_path / "ok"), "--init-from", str(folder / "gpt2"),
                 "--max-iters", "1", "--batch-size", "1", "--eval-iters", "1", "--sample-tokens", "0",
                 "--no-progress", "--backend", "numpy"]) == 0
    saved = checkpoint.load(str(tmp_path / "ok")).state["train_config"]
    assert (saved["block_size"], saved["vocab_size"], saved["tokenizer"], saved["lr"]) == (64, 300, "bpe", 1e-4)
