"""Load a chat model and its tokenizer from a spec: a packaged name, a hub id, a local dir or a GGUF.

GGUF files load slowly (~40 s for the default model), so the first load converts them once into a
cached safetensors copy (~2 s to load afterwards). The cache is guarded by a file lock (two processes
converting at once wait for each other), written into a temporary folder and renamed into place, and
checked against a recorded sha256 on every load: a corrupted copy is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saesteer.config import opt
from saesteer.errors import SaesteerError
from saesteer.model.registry import PACKAGED, PackagedModel, assemble_gguf

MARKER = "saesteer_cache.json"


@dataclass
class ModelConfig:
    """Which model to load and how."""

    model: str = opt(
        "default",
        "model: 'default' (Qwen2.5-Coder-0.5B-Instruct), 'smollm2-135m', a hub id, a local dir or a .gguf file",
    )
    dtype: str = opt("auto", "weights dtype: auto (bf16 where the device supports it, else fp32), bf16, fp16, fp32")
    device: str = opt("auto", "device: auto (cuda if available), cpu, cuda, cuda:N")
    cache_dir: str | None = opt(
        None, "where converted models are cached (default: $SAESTEER_CACHE or ~/.cache/saesteer)"
    )
    trust_remote_code: bool = opt(False, "allow a hub model's own Python code to run (off unless you trust it)")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    spec: str
    source: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def default_cache_dir() -> Path:
    """The cache root: ``$SAESTEER_CACHE`` or ``~/.cache/saesteer``."""
    env = os.environ.get("SAESTEER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "saesteer"


def resolve_device(device: str) -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda[:N]`` to a torch device, with a clear error if unavailable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SaesteerError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SaesteerError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 (AVX512-BF16 / AMX) or at least AVX512."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return any(f in flags for f in ("avx512_bf16", "amx_bf16")) or torch.backends.cpu.get_cpu_capability() == "AVX512"


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Map a dtype name to a torch dtype; ``auto`` picks bf16 where supported, else fp32."""
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if dtype not in names:
        raise SaesteerError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    return names[dtype]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


_VERIFIED: set[tuple[str, tuple[tuple[str, int, int], ...]]] = set()


def _stat_key(entry: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    files = sorted(p for p in entry.iterdir() if p.is_file())
    return str(entry.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _cache_valid(entry: Path) -> bool:
    """True if every file of a cached model matches its recorded size and sha256.

    The full check runs once per process for an unchanged folder (same names, sizes, mtimes).
    """
    if not entry.is_dir():
        return False
    key = _stat_key(entry)
    if key in _VERIFIED:
        return True
    if _check_files(entry):
        _VERIFIED.add(key)
        return True
    return False


def _check_files(entry: Path) -> bool:
    marker = entry / MARKER
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False
    for name, info in files.items():
        f = entry / name
        if not f.is_file() or f.stat().st_size != info["size"] or _sha256(f) != info["sha256"]:
            return False
    return True


def _convert_gguf(gguf_path: Path, entry: Path, source: str) -> None:
    """Load a GGUF with transformers, dequantized to fp32, and save it as safetensors into ``entry``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types for a bad GGUF
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaesteerError(f"could not read GGUF {gguf_path} ({type(exc).__name__}: {exc}); check the file") from None
    # save_pretrained refuses a quantizer-loaded model; the weights are already dequantized.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps({"source": source, "created": time.time(), "files": files}, indent=2))
    if entry.exists():
        shutil.rmtree(entry)
    os.replace(tmp, entry)


def cached_from_gguf(gguf_source: Path | PackagedModel, cache_dir: Path) -> Path:
    """Return the folder of a valid safetensors copy of a GGUF model, converting (once) if needed."""
    if isinstance(gguf_source, PackagedModel):
        name, source = f"{gguf_source.name}-{gguf_source.identity()}", gguf_source.name
    else:
        st = gguf_source.stat()
        ident = hashlib.sha256(f"{gguf_source.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        name, source = f"{gguf_source.stem}-{ident}", str(gguf_source)
    entry = cache_dir / "models" / name
    if _cache_valid(entry):
        return entry
    with _file_lock(cache_dir / "models" / f".{name}.lock"):
        if _cache_valid(entry):  # another process finished converting while we waited
            return entry
        if entry.exists():
            print(f"saesteer: cached model {entry} is incomplete or corrupted; rebuilding it", flush=True)
        if isinstance(gguf_source, PackagedModel):
            if len(gguf_source.parts) == 1:
                gguf_path = gguf_source.parts[0]
                _convert_gguf(gguf_path, entry, source)
            else:
                gguf_path = assemble_gguf(gguf_source, cache_dir / "models" / f".{name}.gguf")
                try:
                    _convert_gguf(gguf_path, entry, source)
                finally:
                    gguf_path.unlink(missing_ok=True)
        else:
            _convert_gguf(gguf_source, entry, source)
    return entry


def resolve_source(spec: str, cache_dir: Path) -> tuple[str, str | None]:
    """Turn a spec into (path or hub id for from_pretrained, subfolder gguf name or None)."""
    if not spec or not spec.strip():
        raise SaesteerError("empty model spec; pass --model default, a hub id or a local path")
    if spec in PACKAGED:
        return str(cached_from_gguf(PACKAGED[spec](), cache_dir)), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SaesteerError(f"GGUF file {path} not found; check the path")
        return str(cached_from_gguf(path, cache_dir)), None
    if path.exists():
        if not (path / "config.json").is_file():
            raise SaesteerError(f"{path} is not a model folder (no config.json); pass a Hugging Face model dir")
        return str(path), None
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, None  # a hub id; transformers resolves it from the local HF cache or the hub
    raise SaesteerError(
        f"unknown model spec {spec!r}; use 'default', 'smollm2-135m', a hub id (org/name), a local dir or a .gguf file"
    )


def load(
    spec: str | ModelConfig = "default",
    dtype: str = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and tokenizer. See :class:`ModelConfig` for the options."""
    if isinstance(spec, ModelConfig):
        cfg = spec
    else:
        cfg = ModelConfig(
            model=spec,
            dtype=dtype,
            device=device,
            cache_dir=None if cache_dir is None else str(cache_dir),
            trust_remote_code=trust_remote_code,
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(cfg.device)
    torch_dtype = resolve_dtype(cfg.dtype, dev)
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    source, _ = resolve_source(cfg.model, root)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True
        )
    except OSError as exc:
        raise SaesteerError(
            f"could not load model {cfg.model!r} ({str(exc).splitlines()[0]}); "
            "check the id or path, or pre-download it (no network here)"
        ) from None
    except ValueError as exc:
        raise SaesteerError(f"could not load model {cfg.model!r}: {str(exc).splitlines()[0]}") from None
    model.to(dev)  # type: ignore[arg-type]
    model.eval()
    prepare_tokenizer(tok)
    return LoadedModel(model=model, tokenizer=tok, spec=cfg.model, source=source)


def prepare_tokenizer(tok: Any) -> None:
    """Left padding for batched generation, and a pad token where the tokenizer has none."""
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
