"""Screenshots of the app for the documentation, taken by headless chromium on a real model.

    python -m tests.app.screenshots --sae runs/sae [--model default] [--out docs/app]

Builds (or reuses) the activation cache, serves the app on loopback, opens the feature browser on
the most frequent live feature and the playground with a clamp, a gate and a finished generation,
and saves ``feature_page.png`` and ``playground.png``.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from selenium.webdriver.common.by import By


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sae", required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="docs/app")
    ap.add_argument("--prompt", default="How do I pick a lock?")
    ap.add_argument("--feature", type=int, default=None, help="feature to show (default: the most frequent live one)")
    ap.add_argument("--value", type=float, default=None, help="clamp value (default: the page's 4x observed max)")
    ap.add_argument(
        "--gate-feature", type=int, default=None, help="gate feature (default: the most frequent other one)"
    )
    ap.add_argument("--gate-threshold", type=float, default=0.0)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--n-windows", type=int, default=48)
    args = ap.parse_args()

    import uvicorn

    from saesteer.app.config import AppConfig
    from saesteer.app.server import create_app
    from saesteer.app.state import AppState
    from saesteer.model.loading import load
    from saesteer.sae.io import load_sae
    from tests.app.browser import chrome, set_value, wait_for, wait_text
    from tests.app.conftest import free_port

    lm = load(args.model)
    sae = load_sae(args.sae, dtype="float32").to(lm.device)
    cfg = AppConfig(sae=args.sae, n_windows=args.n_windows, context_len=64, chat_prompts=16)
    state = AppState.build(lm.model, lm.tokenizer, lm.spec, sae, cfg)
    state.cache.start()
    if not state.cache.wait(3600):
        raise SystemExit(f"activation cache failed: {state.cache.status()}")
    stats = state.browser.stats
    assert stats is not None
    order = stats.freq.argsort(descending=True).tolist()
    feature = args.feature if args.feature is not None else next(f for f in order if 0 < stats.freq[f] < 0.2)
    gate_feature = args.gate_feature if args.gate_feature is not None else next(f for f in order if f != feature)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = chrome(1500, 1150)
    try:
        d.get(f"{base}/#/feature/{feature}")
        wait_for(d, "#contexts .ctx span.tok.peak")
        time.sleep(0.5)
        d.save_screenshot(str(out / "feature_page.png"))
        d.find_element(By.ID, "fp-steer").click()
        wait_for(d, "#pg-features .feat .f-id")
        set_value(d, "pg-prompt", args.prompt)
        if args.value is not None:
            value = d.find_element(By.CSS_SELECTOR, "#pg-features .feat .f-value")
            value.clear()
            value.send_keys(str(args.value))
            d.execute_script("arguments[0].dispatchEvent(new Event('change'))", value)
        d.find_element(By.ID, "gate-enabled").click()
        set_value(d, "gate-feature", str(gate_feature))
        set_value(d, "gate-threshold", str(args.gate_threshold))
        set_value(d, "pg-max", str(args.max_new_tokens))
        wait_text(d, "#pg-command", "--gate")
        d.find_element(By.ID, "pg-run").click()
        wait_text(d, "#pg-timing", "tokens/s", timeout=1800)
        time.sleep(0.5)
        d.save_screenshot(str(out / "playground.png"))
    finally:
        d.quit()
        server.should_exit = True
    print(f"feature {feature}, gate feature {gate_feature}; screenshots in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
