"""``scripts/setup.sh`` stops with pip's error when an install fails, instead of carrying on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_fails_loudly_when_pip_fails(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
    # a python whose pip cannot install anything (as when a package index is unreachable); the rest works
    fake = venv_bin / "python"
    fake.write_text(
        '#!/usr/bin/env bash\nif [ "$1 $2 $3" = "-m pip install" ]; then\n'
        '  echo "ERROR: No matching distribution found" >&2; exit 1\nfi\nexit 0\n'
    )
    fake.chmod(0o755)
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "No matching distribution found" in proc.stderr
