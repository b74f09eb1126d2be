"""The app's HTTP API and page (FastAPI), served by uvicorn.

Endpoints (JSON unless noted; errors are ``{"error": "one line"}`` with a 4xx status):

* ``GET /`` the page; ``GET /static/*`` its script and style (nothing loads from the internet).
* ``GET /api/info``: model, SAE, limits, the default gate, queue and cache state.
* ``GET /api/cache``: activation-cache progress (``state``, ``done``/``total``).
* ``GET /api/features?q=&limit=&offset=``: search by id, token (``tok:``) or label text (``text:``).
* ``GET /api/features/{id}``: a feature page (contexts, histogram, logit lens, nearest, screen results).
* ``POST /api/command``: the ``saesteer generate`` command line of a playground request.
* ``POST /api/generate``: server-sent events: ``meta``, ``start``, ``gate``, ``token``, ``row_done``, ``end``
  (or ``error``); 503 when the queue is full. A client that goes away cancels its generation.
* ``GET /api/results``, ``GET /api/results/file/{path}``, ``GET /api/results/prompts``: the study viewer.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from saesteer.app.config import MAX_NEW_TOKENS_LIMIT
from saesteer.app.generation import GenRequest, command_line, run_generation
from saesteer.app.schemas import MAX_FEATURES, BadInput, GenerateIn, check_feature, to_request
from saesteer.app.state import AppState
from saesteer.errors import SaesteerError

STATIC = Path(__file__).resolve().parent / "static"
DISCONNECT_POLL_S = 0.25
_SERIAL = itertools.count(1)  # numbers the finished generations listed in /api/info's "recent"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid request"


def _chosen(state: AppState) -> int | None:
    ch = (state.features_json or {}).get("chosen")
    return ch.get("feature") if isinstance(ch, dict) else None


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(BadInput)
    async def _bad(_r: Request, exc: BadInput) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(SaesteerError)
    async def _user(_r: Request, exc: SaesteerError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(_r: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))


def create_app(state: AppState) -> FastAPI:
    """The FastAPI app over ``state`` (the caller starts ``state.cache``)."""
    app = FastAPI(title="saesteer app", docs_url=None, redoc_url=None)  # the docs pages load assets from a CDN
    app.state.saesteer = state
    recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
    app.state.recent = recent
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        sae, g = state.sae, state.gate
        gate = None
        if g is not None:
            feat = getattr(g.gate.scorer, "feature", None)
            gate = {"description": g.description, "spec": g.spec, "threshold": g.gate.threshold, "feature": feat}
        return {
            "model": state.model_name,
            "sae": {
                "path": state.cfg.sae,
                "d_sae": sae.d_sae,
                "d_in": sae.d_in,
                "hook": sae.cfg.hook_name,
                "architecture": sae.cfg.architecture,
                "k": sae.cfg.k,
            },
            "features_json": state.cfg.features if state.features_json else None,
            "chosen": _chosen(state),
            "gate": gate,
            "limits": {
                "max_new_tokens": MAX_NEW_TOKENS_LIMIT,
                "max_prompt_chars": state.cfg.max_prompt_chars,
                "max_prompt_tokens": state.cfg.max_prompt_tokens,
                "max_features": MAX_FEATURES,
                "max_queue": state.cfg.max_queue,
            },
            "queue": {"active": state.queue.active, "limit": state.queue.limit},
            "cache": state.cache.status(),
            "results": state.results.available,
            "recent": list(recent),
        }

    @app.get("/api/cache")
    def cache() -> dict[str, Any]:
        return state.cache.status()

    @app.get("/api/features")
    def features(
        q: str = Query("", max_length=200), limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)
    ) -> dict[str, Any]:
        return {**state.browser.search(q, limit, offset), "cache": state.cache.status()}

    @app.get("/api/features/{feature}")
    def feature(feature: int, brief: bool = False) -> dict[str, Any]:
        try:
            check_feature(state, feature, "feature page")
        except BadInput as exc:
            raise HTTPException(404, str(exc)) from None
        if brief:  # the playground's sliders: label and clamp bounds only
            return {**state.browser.summary(feature), "bounds": state.browser.value_bounds(feature)}
        return {**state.browser.page(feature), "cache": state.cache.status()}

    @app.post("/api/command")
    def command(body: GenerateIn) -> dict[str, Any]:
        req = to_request(state, body)
        return {"command": command_line(state.model_name, state.cfg.sae, req), "rows": list(req.rows)}

    @app.post("/api/generate")
    async def generate(body: GenerateIn, request: Request) -> Any:
        req = to_request(state, body)
        if not state.queue.try_enter():
            msg = (
                f"the generation queue is full ({state.queue.limit} requests waiting or running); "
                "retry in a few seconds"
            )
            return _error(503, msg, {"Retry-After": "5"})
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(ev: dict[str, Any] | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ev)

        threading.Thread(target=_worker, args=(state, req, emit, recent), daemon=True).start()
        meta = {"rows": list(req.rows), "command": command_line(state.model_name, state.cfg.sae, req)}
        return StreamingResponse(
            _stream(request, req, events, meta),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    _results_routes(app, state)
    return app


def _worker(state: AppState, req: GenRequest, emit: Any, recent: collections.deque[dict[str, Any]]) -> None:
    """Wait for the model (or a cancel), generate, report; always leaves the queue and ends the stream."""
    t0 = time.perf_counter()
    try:
        while not req.cancel.is_set():
            if state.model_lock.acquire(timeout=0.1):
                break
        else:
            recent.append(
                {
                    "n": next(_SERIAL),
                    "cancelled": True,
                    "tokens": [],
                    "queue_wait_s": round(time.perf_counter() - t0, 4),
                }
            )
            emit({"type": "end", "cancelled": True})
            return
        try:
            wait = round(time.perf_counter() - t0, 4)
            emit({"type": "start", "queue_wait_s": wait})
            summary = run_generation(state.model, state.tokenizer, state.sae, req, emit)
            summary["queue_wait_s"] = wait
            recent.append({"n": next(_SERIAL), **summary})
            emit({"type": "end", **summary})
        finally:
            state.model_lock.release()
    except SaesteerError as exc:
        emit({"type": "error", "error": str(exc)})
    except Exception as exc:  # reported in the stream; the server keeps serving
        emit({"type": "error", "error": f"generation failed: {type(exc).__name__}: {exc}"})
    finally:
        state.queue.leave()
        emit(None)


async def _stream(request: Request, req: GenRequest, events: asyncio.Queue[Any], meta: dict[str, Any]) -> Any:
    """Server-sent events until the worker ends; a disconnected client sets the cancel flag."""
    try:
        yield _sse("meta", meta)
        last_check = time.monotonic()
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                ev = {"type": "_idle"}
            if ev is None:
                break
            if time.monotonic() - last_check >= DISCONNECT_POLL_S:
                last_check = time.monotonic()
                if await request.is_disconnected():
                    break
            if ev["type"] != "_idle":
                yield _sse(ev["type"], ev)
    finally:
        req.cancel.set()


def _results_routes(app: FastAPI, state: AppState) -> None:
    @app.get("/api/results")
    def results() -> dict[str, Any]:
        return state.results.overview()

    @app.get("/api/results/file/{rel:path}")
    def results_file(rel: str) -> FileResponse:
        try:
            return FileResponse(state.results.file(rel))
        except FileNotFoundError:
            raise HTTPException(404, f"no file {rel!r} in the report folder") from None

    @app.get("/api/results/prompts")
    def results_prompts(
        offset: int = Query(0, ge=0),
        limit: int = Query(20, ge=1, le=200),
        q: str = Query("", max_length=200),
        prompt_set: str = Query("", alias="set", max_length=100),
    ) -> dict[str, Any]:
        return state.results.prompts(offset, limit, q, prompt_set)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(state: AppState, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Start the activation cache and serve until interrupted (warns when not bound to loopback)."""
    import sys

    import uvicorn

    if host not in LOOPBACK:
        print(
            f"saesteer: warning: serving on {host}: anyone who can reach this address can run the model; "
            "use the default 127.0.0.1 unless you mean it",
            file=sys.stderr,
        )
    if port == 0:  # pick a free port now so the printed address is the real one
        import socket

        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
    state.cache.start()
    print(f"saesteer app: http://{'[' + host + ']' if ':' in host else host}:{port}/", flush=True)
    uvicorn.run(create_app(state), host=host, port=port, log_level=log_level)
