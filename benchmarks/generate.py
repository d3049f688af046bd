"""Sampling speed: Model.generate with its key/value cache (the prompt's rows once, then each new
token's products on its row alone: Transformer::decode) against the same call with cache=False
(a whole forward of the window per token, what generate() ran before), and against
transformers' greedy generate() (its own cache) on the same weights, same threads.

--device cuda runs it on the GPU (nuri in bf16 on the CUDA backend; transformers in bf16 on
torch's CUDA device, left out with "peer_missing" when this Python's torch has no CUDA device or
transformers is missing) and adds a fourth contender, nuri with NURI_DECODE_SPLITS=1: the
decoding kernel with each row's keys on one block, against the keys split over blocks that the
launcher chooses when the rows leave SMs idle. There the kernels round differently (the tiled
forward, the decoding kernel with and without splits), so the tokens are reported
(same_tokens_as_nuri), not required equal.

Greedy decoding of --new tokens after a --prompt-token prompt; the contenders alternate after
one warm-up each, --reps samples of each. Prints one JSON object per peer (BENCHMARKS.md
shape): medians with min and max, tokens per second of new tokens, and ratio = the peer's median
time / nuri's (above 1: nuri with its cache is faster). Every call's tokens are checked equal to
its contender's first call's, and on the CPU the cache's to cache=False's (the cache changes no
token).

    PYTHONPATH=build/python python3 benchmarks/generate.py [--model gpt2-124M] [--prompt 64]
        [--new 64] [--reps 5] [--threads 2] [--json FILE] [--no-whole] [--device cpu|cuda]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import JsonLines, reexec_with_cuda_torch, stats  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu (f32, default) or cuda (bf16; adds NURI_DECODE_SPLITS=1)")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np

    import nuri

    torch, missing = None, None
    try:  # the peer: transformers on torch (on its CUDA device with --device cuda)
        import torch
        from transformers import AutoModelForCausalLM
        if cuda and not torch.cuda.is_available():
            raise ImportError(f"torch {torch.__version__} sees no CUDA device")
    except ImportError as e:
        if cuda:  # another Python here may have torch with CUDA: run this script there
            reexec_with_cuda_torch(ROOT, "NURI_GENERATE_REEXEC", "torch, transformers, nuri")
        torch, missing = None, f"transformers on torch: {e}"
    cfg = nuri.ModelConfig.preset(args.model)
    model = nuri.Model(cfg, args.device, 1)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size, size=args.prompt).tolist()
    hf = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as d:
            nuri.export_hf(model, d)
            hf = AutoModelForCausalLM.from_pretrained(
                d, torch_dtype=torch.bfloat16 if cuda else torch.float32).to(args.device).eval()

    def run_nuri(cache):
        return model.generate(prompt, max_new_tokens=args.new, temperature=0, cache=cache)

    def run_one_block():  # the decoding kernel with each row's keys on one block
        given = os.environ.get("NURI_DECODE_SPLITS")
        os.environ["NURI_DECODE_SPLITS"] = "1"
        try:
            return run_nuri(True)
        finally:
            if given is None:
                del os.environ["NURI_DECODE_SPLITS"]
            else:
                os.environ["NURI_DECODE_SPLITS"] = given

    def run_hf():
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt], device=args.device),
                              max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False,
                              pad_token_id=0)
        return out[0, len(prompt):].tolist()

    contenders = {"cache": lambda: run_nuri(True), "whole": lambda: run_nuri(False),
                  "one_block": run_one_block, "hf": run_hf}
    if args.no_whole:
        del contenders["whole"]
    if not cuda:
        del contenders["one_block"]
    if hf is None:
        del contenders["hf"]
    times = {k: [] for k in contenders}
    tokens = {}
    for name, fn in contenders.items():  # warm-up
        tokens[name] = fn()
    if not cuda:  # (on the GPU the contenders' kernels round differently)
        assert tokens["cache"] == tokens.get("whole", tokens["cache"]), \
            "the cache changed the tokens"
    for _ in range(args.reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            assert got == tokens[name], f"{name}: the tokens changed between calls"

    emit = JsonLines(args.json)
    config = {"model": args.model, "prompt": args.prompt, "new": args.new,
              "threads": args.threads, "reps": args.reps, "device": args.device}
    if cuda:
        config["gpu"] = nuri.build_info().get("cuda_devices")
    ours = stats(times["cache"])
    ours["tokens_per_s"] = args.new / ours["median_s"]
    peers = {"whole": "nuri generate(cache=False): a whole forward of the window per token",
             "one_block": "nuri generate with NURI_DECODE_SPLITS=1: each row's keys on one "
                          "block of the decoding kernel",
             "hf": f"transformers {__import__('transformers').__version__} greedy generate "
                   f"(torch {torch.__version__}, its key/value cache)" if hf is not None else None}
    bench = "generate_" + args.device
    if hf is None:
        emit({"bench": bench, "config": config, "nuri": ours, "peer": None, "ratio": None,
              "peer_missing": missing})
    for key, name in peers.items():
        if key not in contenders:
            continue
        peer = stats(times[key])
        peer["name"] = name
        peer["tokens_per_s"] = args.new / peer["median_s"]
        emit({"bench": bench, "config": config, "nuri": ours, "peer": peer,
              "ratio": peer["median_s"] / ours["median_s"],
              "same_tokens_as_nuri": tokens[key] == tokens["cache"]})
    emit.close()


if __name__ == "__main__":
    main()
