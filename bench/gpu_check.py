"""GPU check: harvest, SAE training and steering throughput on 3B / 8B model shapes, no downloads.

One command, a few minutes on one GPU (no internet needed)::

    python bench/gpu_check.py                 # Phi-3-mini and Llama-3-8B shapes, cuda, bf16
    python bench/gpu_check.py --small         # the same path on tiny versions of both (CPU smoke test)

Models are random-init from their real configs (``transformers`` config classes: Phi-3-mini-4k-instruct,
Meta-Llama-3-8B); a word-level tokenizer over the model's vocabulary size and a random-word corpus stand
in for the real tokenizer and data (throughput does not depend on what the weights or words are). Per
model it measures, each against a baseline run in the same process:

* harvest: ``saesteer.activations.harvest`` tokens/s at the middle layer vs a plain full forward;
* SAE training: saesteer's Top-k trainer tokens/s on the harvested activations vs EleutherAI sparsify
  (when ``sparsify`` is importable; see ``bench/train_sae.py``);
* steering: batched greedy generation with one clamped SAE feature vs unsteered (ratio, target >= 0.97).

Prints one line per measurement with its ratio and writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_sae as sae_bench

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "phi3-mini": ("Phi3Config", dict(  # microsoft/Phi-3-mini-4k-instruct
        hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, pad_token_id=0)),
    "llama3-8b": ("LlamaConfig", dict(  # meta-llama/Meta-Llama-3-8B
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0)),
}  # fmt: skip
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build_model(name: str, small: bool, dev: torch.device, dtype: torch.dtype) -> Any:
    cls, kw = SHAPES[name]
    kw = dict(kw)
    if small:
        kw.update(SMALL, num_key_value_heads=min(kw["num_key_value_heads"], 4))
    cfg = getattr(transformers, cls)(**kw)
    torch.manual_seed(0)
    with dev:
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def word_tokenizer(vocab_size: int) -> Any:
    """A real fast tokenizer over ``vocab_size`` words ``t0 t1 ...`` (t0 pad, t1 eos, t2 unk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t2")


def write_corpus(path: Path, vocab_size: int, n_tokens: int) -> Path:
    rng = random.Random(0)
    with gzip.open(path, "wt") as fh:
        for _ in range(n_tokens // 500 + 1):
            fh.write(json.dumps({"text": " ".join(f"t{rng.randrange(3, vocab_size)}" for _ in range(500))}) + "\n")
    return path


def full_forward_rate(model: Any, windows: torch.Tensor, batch: int, dev: torch.device) -> float:
    """Tokens/s of the plain full forward (logits included) over ``windows``, ``batch`` at a time."""
    with torch.no_grad():
        model(input_ids=windows[:batch].to(dev), use_cache=False)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        for i in range(0, windows.shape[0], batch):
            model(input_ids=windows[i : i + batch].to(dev), use_cache=False)
        sync(dev)
    return windows.numel() / (time.perf_counter() - t0)


def check_harvest(model: Any, tok: Any, corpus: Path, out: Path, a: argparse.Namespace) -> dict[str, float]:
    from saesteer.activations.harvest import HarvestConfig, harvest
    from saesteer.activations.sources import iter_texts, pack_tokens

    dev = next(model.parameters()).device
    layer = model.config.num_hidden_layers // 2
    cfg = HarvestConfig(out_dir=str(out), hook=f"blocks.{layer}.hook_resid_post", corpus=[str(corpus)],
                        n_tokens=a.harvest_tokens, held_out_tokens=a.context_len * a.batch,
                        context_len=a.context_len, batch_size=a.batch, shard_tokens=a.harvest_tokens // 4)  # fmt: skip
    warm = HarvestConfig(**{**cfg.__dict__, "out_dir": str(out) + "-warm", "n_tokens": a.context_len * a.batch})
    harvest(model, tok, warm, "random", progress=False)  # kernels and allocator warmed up
    sync(dev)
    t0 = time.perf_counter()
    harvest(model, tok, cfg, "random", progress=False)
    sync(dev)
    rate = (a.harvest_tokens + cfg.held_out_tokens) / (time.perf_counter() - t0)
    wins = list(pack_tokens(tok, iter_texts(corpus), a.context_len))[: max(a.batch * 4, 1)]
    base = full_forward_rate(model, torch.tensor(wins), a.batch, dev)
    print(f"  harvest at {cfg.hook}: {rate:,.0f} tokens/s vs full forward {base:,.0f} tokens/s: {rate / base:.2f}x")
    return {"harvest_tokens_per_s": rate, "full_forward_tokens_per_s": base, "ratio": rate / base, "layer": layer}


def check_training(acts: Path, d_model: int, a: argparse.Namespace) -> dict[str, Any]:
    ns = argparse.Namespace(device=a.device_name, steps=a.sae_steps, warmup=2, batch=a.sae_batch, d_in=d_model,
                            d_sae=a.d_sae, k=32, lr=2e-4, dead_after=1, acts=str(acts))  # fmt: skip
    batches = sae_bench.make_batches(ns)
    out: dict[str, Any] = {"d_sae": a.d_sae, "batch": a.sae_batch}
    for name in ("saesteer", "sparsify"):
        try:
            out[name] = sae_bench.IMPLS[name](batches, ns)
        except ImportError as exc:
            out[name] = None
            print(f"  SAE training {name}: not installed ({exc.name})")
            continue
        print(f"  SAE training {name}: {out[name]:,.0f} tokens/s")
    if out.get("sparsify"):
        out["ratio_vs_sparsify"] = out["saesteer"] / out["sparsify"]
        print(f"  SAE training saesteer vs sparsify: {out['ratio_vs_sparsify']:.2f}x")
    return out


def check_steering(model: Any, a: argparse.Namespace) -> dict[str, float]:
    from saesteer.model.adapter import ArchAdapter
    from saesteer.sae.base import SAE, SAEConfig
    from saesteer.steering import ClampFeature, Steering

    dev = next(model.parameters()).device
    ad = ArchAdapter(model)
    hook = f"blocks.{model.config.num_hidden_layers // 2}.hook_resid_post"
    torch.manual_seed(1)
    sae = SAE.from_config(SAEConfig("topk", d_in=ad.d_model, d_sae=a.d_sae, k=32, hook_name=hook)).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (a.gen_batch, 40), generator=g).to(dev)
    x = ad.run_to(hook, ids).float()
    feat = int((sae.encode(x) > 0).sum((0, 1)).argmax())
    steer = Steering(model, sae, [ClampFeature(feat, 4.0 * float(x.norm(dim=-1).median()))])
    kw = dict(max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)

    def run(st: Steering | None) -> float:
        handle = st.attach() if st is not None else None
        try:
            sync(dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            sync(dev)
            return time.perf_counter() - t0
        finally:
            if handle is not None:
                handle.remove()

    run(None), run(steer)  # warm-up
    base, steered = [], []
    for _ in range(a.rounds):  # interleaved, so drift hits both alike
        base.append(run(None))
        steered.append(run(steer))
    ratio = statistics.median(base) / statistics.median(steered)
    rate = a.gen_batch * a.new_tokens / statistics.median(base)
    print(f"  steering (clamp, d_sae {a.d_sae}): throughput {ratio:.3f}x of unsteered ({rate:,.0f} tokens/s base)")
    return {"ratio": ratio, "base_tokens_per_s": rate, "rounds": a.rounds, "new_tokens": a.new_tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny versions of the shapes (a CPU smoke test)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--models", default="phi3-mini,llama3-8b")
    p.add_argument("--out", default="gpu_check.json", help="JSON file for the results")
    a = p.parse_args()
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else a.device.replace("auto", "cpu"))
    a.device_name = str(dev)
    big = not a.small
    a.context_len, a.batch = (1024, 16) if big else (64, 4)
    a.harvest_tokens = 262_144 if big else 4096
    a.d_sae, a.sae_batch, a.sae_steps = (32_768, 4096, 20) if big else (1024, 256, 5)
    a.gen_batch, a.new_tokens, a.rounds = (16, 64, 3) if big else (2, 4, 1)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"# gpu_check on {gpu}, torch {torch.__version__}, transformers {transformers.__version__}, {dtype}")
    results: dict[str, Any] = {"device": gpu, "torch": torch.__version__, "small": a.small, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            t0 = time.perf_counter()
            model = build_model(name, a.small, dev, dtype)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"{name}: {n_params / 1e9:.2f}B parameters (random init, {time.perf_counter() - t0:.0f} s)")
            tok = word_tokenizer(model.config.vocab_size)
            corpus = write_corpus(Path(tmp) / f"{name}.jsonl.gz", model.config.vocab_size, 2 * a.harvest_tokens)
            acts = Path(tmp) / f"{name}-acts"
            res = {"parameters": n_params, "harvest": check_harvest(model, tok, corpus, acts, a)}
            res["sae_training"] = check_training(acts, model.config.hidden_size, a)
            res["steering"] = check_steering(model, a)
            results["models"][name] = res
            del model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"results in {a.out}")


if __name__ == "__main__":
    main()
