"""Load check of ``saesteer app``: N concurrent generation requests on loopback against one model.

    python bench/app_load.py --sae runs/sae [--n 50] [--max-new-tokens 16] [--max-queue 8]

Serves the app (uvicorn, 127.0.0.1, a free port) in this process, fires ``--n`` concurrent
``POST /api/generate`` requests (baseline, steered and gated rows each), and waits at most
``--timeout`` seconds in all; then stops by itself. Success: the server survives, every request is
answered (a complete event stream) or refused with 503, and none hangs. Prints the p50/p95 time to
first token of the answered requests, their tokens/s, and the ratio of their decode rate to that of a
single request on the idle server measured in the same run (the baseline).
Without ``--sae`` a random Top-k SAE at ``--hook`` is used (the load does not depend on its weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import torch

PROMPTS = ["How do I pick a lock?", "Write a haiku about rivers.", "What is 17 * 23?", "Explain photosynthesis."]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else float("nan")


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": None, "ttft": None, "end": None, "hung": False}
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", url, json=body) as r:
                out["status"] = r.status_code
                if r.status_code != 200:
                    await r.aread()
                    out["error"] = r.json().get("error")
                    out["seconds"] = time.perf_counter() - t0
                    return out
                kind = ""
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        if kind == "token" and out["ttft"] is None:
                            out["ttft"] = time.perf_counter() - t0
                        elif kind in ("end", "error"):
                            out["end"] = {"kind": kind, **json.loads(line[6:])}
    except TimeoutError:
        out["hung"] = True
    except httpx.HTTPError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["seconds"] = time.perf_counter() - t0
    return out


async def fire(base: str, n: int, body_for: Any, timeout: float) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits) as client:
        return await asyncio.gather(*(one(client, base + "/api/generate", body_for(i), timeout) for i in range(n)))


def start_server(app: Any) -> tuple[Any, str]:
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def load_sae(args: argparse.Namespace, d_model: int) -> tuple[Any, str, str]:
    from saesteer.sae.base import SAE, SAEConfig
    from saesteer.sae.io import load_sae as load
    from saesteer.sae.io import save_sae

    if args.sae:
        return load(args.sae, dtype="float32"), args.sae, "given"
    torch.manual_seed(0)
    sae = SAE.from_config(SAEConfig("topk", d_model, 1024, k=32, hook_name=args.hook)).eval()
    path = tempfile.mkdtemp(prefix="saesteer-bench-sae-")
    save_sae(sae, path)
    return sae, path, "random Top-k (d_sae 1024, k 32)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--sae", default=None)
    ap.add_argument("--hook", default="blocks.12.hook_resid_post")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole load (then it stops)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from saesteer.app.config import AppConfig
    from saesteer.app.server import create_app
    from saesteer.app.state import AppState
    from saesteer.model.adapter import ArchAdapter
    from saesteer.model.loading import load

    lm = load(args.model)
    sae, sae_path, sae_kind = load_sae(args, ArchAdapter(lm.model).d_model)
    cfg = AppConfig(sae=sae_path, max_queue=args.max_queue, gate=f"feature:0>{0.0}")
    state = AppState.build(lm.model, lm.tokenizer, lm.spec, sae.to(lm.device), cfg)

    def body(i: int) -> dict[str, Any]:
        return {"prompt": PROMPTS[i % len(PROMPTS)], "features": [{"feature": 1 + i % 5, "value": 5.0}],
                "gate": {"enabled": True}, "max_new_tokens": args.max_new_tokens}  # fmt: skip

    server, base = start_server(create_app(state))
    alone = asyncio.run(fire(base, 1, body, args.timeout))[0]  # warm-up: first allocations, kernel choice
    alone = asyncio.run(fire(base, 1, body, args.timeout))[0]  # the baseline: one request on the idle server
    if not alone["end"] or alone["end"]["kind"] != "end":
        print(f"FAILURE: a single request did not complete: {alone}")
        server.should_exit = True
        return 1
    base_rate = float(alone["end"]["tokens_per_s"])
    t0 = time.perf_counter()
    results = asyncio.run(fire(base, args.n, body, args.timeout))
    wall = time.perf_counter() - t0
    alive = httpx.get(base + "/api/info", timeout=30).status_code == 200
    server.should_exit = True

    ok = [r for r in results if r["status"] == 200 and r["end"] and r["end"]["kind"] == "end"]
    refused = [r for r in results if r["status"] == 503]
    hung = [r for r in results if r["hung"]]
    other = [r for r in results if r not in ok and r not in refused and r not in hung]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    rates = [r["end"]["tokens_per_s"] for r in ok if r["end"].get("tokens_per_s")]
    tokens = sum(sum(r["end"]["tokens"]) for r in ok)
    print(f"model {lm.spec} ({lm.dtype}, {lm.device}); SAE {sae_kind}; {torch.get_num_threads()} torch threads")
    print(f"{args.n} concurrent requests, {args.max_new_tokens} new tokens x 3 rows, queue limit {args.max_queue}")
    print(f"answered {len(ok)}, refused 503 {len(refused)}, hung {len(hung)}, other {len(other)}; wall {wall:.1f} s")
    print(f"time to first token (answered, incl. queue wait): p50 {pct(ttft, 0.5):.2f} s, p95 {pct(ttft, 0.95):.2f} s")
    own = [r["end"]["first_token_s"] for r in ok if r["end"].get("first_token_s") is not None]
    print(
        f"time to first token once the model is free (server side): p50 {pct(own, 0.5):.2f} s, p95 {pct(own, 0.95):.2f} s"
    )
    refused_s = [r["seconds"] for r in refused]
    if refused_s:
        print(f"503 answered in: p50 {pct(refused_s, 0.5) * 1000:.0f} ms, max {max(refused_s) * 1000:.0f} ms")
    if rates:
        print(
            f"tokens/s per request (3 rows): p50 {statistics.median(rates):.1f}; all answered: {tokens / wall:.1f} tok/s"
        )
        print(
            f"baseline, one request alone (same run): {base_rate:.1f} tok/s, first token {alone['ttft']:.2f} s; "
            f"p50 tokens/s under load / alone: {statistics.median(rates) / base_rate:.2f}"
        )
    for r in other[:3]:
        print(f"  unexpected: {r}")
    success = alive and not hung and not other and len(ok) + len(refused) == args.n
    print("success" if success else "FAILURE: a request hung, failed, or the server died")
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
