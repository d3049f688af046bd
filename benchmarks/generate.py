"""Sampling speed: Model.generate with its key/value cache (the prompt's rows once, then each new
token's products on its row alone: Transformer::decode) against the same call with cache=False
(a whole forward of the window per token, what generate() ran before), and against
transformers' greedy generate() (its own cache) on the same weights, same threads.

Greedy decoding of --new tokens after a --prompt-token prompt; the three contenders alternate
after one warm-up each, --reps samples of each. Prints one JSON object per peer (BENCHMARKS.md
shape): medians with min and max, tokens per second of new tokens, and ratio = the peer's median
time / nuri's (above 1: nuri with its cache is faster). Every call's tokens are checked equal to
the first's (the cache changes no token).

    PYTHONPATH=build/python python3 benchmarks/generate.py [--model gpt2-124M] [--prompt 64]
        [--new 64] [--reps 5] [--threads 2] [--json FILE] [--no-whole]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import JsonLines, stats  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-124M", help="a preset (default gpt2-124M)")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens (default 64)")
    ap.add_argument("--new", type=int, default=64, help="tokens generated (default 64)")
    ap.add_argument("--reps", type=int, default=5, help="samples of each (default 5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both")
    ap.add_argument("--json", help="also write the JSON lines here")
    ap.add_argument("--no-whole", action="store_true",
                    help="leave out cache=False (its cost grows with the square of the window)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    import nuri

    torch.set_num_threads(args.threads)
    cfg = nuri.ModelConfig.preset(args.model)
    model = nuri.Model(cfg, "cpu", 1)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, size=args.prompt).tolist()
    with tempfile.TemporaryDirectory() as d:
        nuri.export_hf(model, d)
        hf = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()

    def run_nuri(cache):
        return model.generate(prompt, max_new_tokens=args.new, temperature=0, cache=cache)

    def run_hf():
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=False, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    contenders = {"cache": lambda: run_nuri(True), "whole": lambda: run_nuri(False),
                  "hf": run_hf}
    if args.no_whole:
        del contenders["whole"]
    times = {k: [] for k in contenders}
    tokens = {}
    for name, fn in contenders.items():  # warm-up
        tokens[name] = fn()
    assert tokens["cache"] == tokens.get("whole", tokens["cache"]), "the cache changed the tokens"
    for _ in range(args.reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            assert got == tokens[name], f"{name}: the tokens changed between calls"

    emit = JsonLines(args.json)
    config = {"model": args.model, "prompt": args.prompt, "new": args.new,
              "threads": args.threads, "reps": args.reps}
    ours = stats(times["cache"])
    ours["tokens_per_s"] = args.new / ours["median_s"]
    peers = {"whole": "nuri generate(cache=False): a whole forward of the window per token",
             "hf": f"transformers {__import__('transformers').__version__} greedy generate "
                   f"(torch {torch.__version__}, its key/value cache)"}
    for key, name in peers.items():
        if key not in contenders:
            continue
        peer = stats(times[key])
        peer["name"] = name
        peer["tokens_per_s"] = args.new / peer["median_s"]
        emit({"bench": "generate_cpu", "config": config, "nuri": ours, "peer": peer,
              "ratio": peer["median_s"] / ours["median_s"],
              "same_tokens_as_nuri": tokens[key] == tokens["cache"]})
    emit.close()


if __name__ == "__main__":
    main()
