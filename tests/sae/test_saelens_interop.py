"""Our files load in SAELens and SAELens' files load here, with equal encoder outputs (needs sae-lens).

Runs in the bench environment (``.venv-bench``, where sae-lens is installed); skipped elsewhere.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from saesteer.sae.io import load_sae, save_sae
from tests.conftest import interop_import
from tests.sae.conftest import random_sae

sae_lens = interop_import("sae_lens")

ARCHS = ["topk", "relu", "jumprelu"]


@pytest.mark.parametrize("arch", ARCHS)
def test_ours_load_in_saelens_with_equal_encodings(arch: str, tmp_path: Path) -> None:
    ours = random_sae(arch, d_in=24, d_sae=96, k=7)
    save_sae(ours, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    assert theirs.cfg.d_sae == 96 and theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    x = torch.randn(20, 24)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x))
        torch.testing.assert_close(theirs.decode(theirs.encode(x)), ours(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_files_load_here_with_equal_encodings(arch: str, tmp_path: Path) -> None:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    kinds = {
        "topk": (TopKSAE, TopKSAEConfig, {"k": 7}),
        "relu": (StandardSAE, StandardSAEConfig, {}),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    }
    cls, cfg_cls, extra = kinds[arch]
    torch.manual_seed(0)
    theirs = cls(cfg_cls(d_in=24, d_sae=96, **extra))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        if arch == "jumprelu":
            theirs.threshold.uniform_(0.0, 0.2)
    theirs.cfg.metadata.hook_name = "blocks.4.hook_resid_post"
    theirs.cfg.metadata.model_name = "tiny"
    theirs.save_model(str(tmp_path))
    ours = load_sae(tmp_path)
    assert ours.cfg.architecture == arch and ours.cfg.hook_name == "blocks.4.hook_resid_post"
    x = torch.randn(20, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x), theirs.decode(theirs.encode(x)), rtol=1e-5, atol=1e-5)
