"""Interpret one feature: top-activating contexts, activation density, logit lens; as text, Markdown and HTML.

* **Contexts** come from a :class:`~saesteer.features.contexts.ContextStore` (corpus windows and chat
  prompts), one per row, with the activation of every token. Words on a small deny list (profanity
  and slurs; the corpus holds web text) are masked in every rendering: each token overlapping a
  denied word is shown as asterisks.
* **Density**: the feature's firing frequency (log10) and a histogram of its non-zero activations;
  counts are drawn on a log10 scale.
* **Logit lens**: ``W_U (g * W_dec[f])`` with ``g`` the final norm's gain (centred first for a
  LayerNorm): the tokens the decoder direction most promotes and most suppresses.
"""

from __future__ import annotations

import codecs
import html
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch

from saesteer.errors import SaesteerError
from saesteer.features.contexts import Context, ContextStore
from saesteer.model.adapter import ArchAdapter
from saesteer.sae.base import SAE

# The deny list, ROT13-encoded so the source does not spell the words out. "*" before a stem: match it
# inside any word; "*" after: match words starting with it; neither: the word itself (plus s/es).
_DENY_ROT13 = (
    "*shpx",
    "*fuvg",
    "*phag",
    "*avtt",
    "ovgpu*",
    "nffubyr*",
    "juber*",
    "fyhg*",
    "ergneq*",
    "gjng*",
    "jnax*",
    "snttbg*",
    "qvpx",
    "pbpx",
    "cevpx",
    "fcvp",
    "xvxr",
    "puvax",
    "qlxr",
    "genaal",
    "onfgneq",
    "chffl",
    "obyybpx",
)
MASK_CHAR = "*"


def deny_pattern(extra: Sequence[str] = ()) -> re.Pattern[str]:
    """The compiled deny-list regex (plus ``extra`` plain words, matched as prefixes)."""
    parts = []
    for entry in [codecs.decode(e, "rot13") for e in _DENY_ROT13] + [f"{w.lower()}*" for w in extra if w]:
        stem = re.escape(entry.strip("*"))
        if entry.startswith("*"):
            parts.append(rf"\w*{stem}\w*")
        elif entry.endswith("*"):
            parts.append(rf"\b{stem}\w*")
        else:
            parts.append(rf"\b{stem}(?:e?s)?\b")
    return re.compile("|".join(parts), re.IGNORECASE)


def mask_pieces(pieces: Sequence[str], pattern: re.Pattern[str] | None = None) -> tuple[list[str], list[bool]]:
    """Token texts with every token that overlaps a denied word replaced by asterisks; and which were masked."""
    pattern = pattern or deny_pattern()
    text = "".join(pieces)
    spans = [m.span() for m in pattern.finditer(text)]
    out, flags, pos = [], [], 0
    for p in pieces:
        lo, hi = pos, pos + len(p)
        pos = hi
        hit = any(a < hi and lo < b for a, b in spans)
        out.append(re.sub(r"\S", MASK_CHAR, p) if hit else p)
        flags.append(hit)
    return out, flags


def _norm_gain(adapter: ArchAdapter, d: torch.Tensor) -> torch.Tensor:
    """The decoder direction through the final norm's elementwise gain (centred for LayerNorm)."""
    norm = adapter.final_norm
    if isinstance(norm, torch.nn.LayerNorm):
        d = d - d.mean()
    w = getattr(norm, "weight", None)
    if w is None:
        return d
    gain = w.detach().float().to(d.device)
    if adapter.model_type.startswith("gemma"):  # Gemma's RMSNorm scales by (1 + weight)
        gain = 1.0 + gain
    return d * gain


@torch.no_grad()
def logit_lens(adapter: ArchAdapter, tokenizer: Any, sae: SAE, feature: int, k: int = 15) -> dict[str, Any]:
    """Tokens most promoted and most suppressed by ``W_dec[feature]`` through the final norm and unembedding."""
    if not 0 <= feature < sae.d_sae:
        raise SaesteerError(f"feature {feature} out of range; this SAE has features 0..{sae.d_sae - 1}")
    w_u = cast(torch.Tensor, adapter.unembed.weight).detach()
    d = _norm_gain(adapter, sae.W_dec[feature].detach().float().to(w_u.device))
    logits = (w_u.float() @ d).cpu()
    logits = logits[: len(tokenizer)] if len(tokenizer) < logits.shape[0] else logits
    pat = deny_pattern()

    def entries(idx: torch.Tensor) -> list[dict[str, Any]]:
        return [
            {
                "token": mask_pieces([tokenizer.decode([int(i)])], pat)[0][0],
                "id": int(i),
                "logit": round(float(logits[i]), 4),
            }
            for i in idx
        ]

    k = min(k, logits.shape[0])
    return {"promoted": entries(torch.topk(logits, k).indices), "suppressed": entries(torch.topk(-logits, k).indices)}


@dataclass
class Histogram:
    """Counts of a feature's non-zero activations in equal-width bins over (0, max]."""

    edges: list[float]
    counts: list[int]


def histogram(acts: torch.Tensor, bins: int = 12) -> Histogram:
    nz = acts[acts > 0].float()
    if nz.numel() == 0:
        return Histogram([], [])
    top = float(nz.max())
    counts = torch.histc(nz, bins=bins, min=0.0, max=top).long().tolist()
    return Histogram([round(top * i / bins, 4) for i in range(bins + 1)], counts)


@dataclass
class ContextView:
    """A context as shown: masked token texts, activations, where it came from."""

    source: str
    peak: float
    pieces: list[str]
    acts: list[float]
    masked: int


@dataclass
class FeatureCard:
    """Everything shown about one feature."""

    feature: int
    freq: float
    log10_freq: float | None
    mean_act: float
    max_act: float
    n_tokens: int
    histogram: Histogram
    contexts: list[ContextView]
    logit_lens: dict[str, Any]
    title: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # --- renderings -------------------------------------------------------------------------------------------
    def _density_lines(self) -> list[str]:
        lines = [
            f"density: active on {self.freq:.3%} of {self.n_tokens} tokens (log10 {_fmt(self.log10_freq)}); "
            f"mean {self.mean_act:.3f}, max {self.max_act:.3f} where active"
        ]
        h = self.histogram
        if h.counts:
            top = max(math.log10(c + 1) for c in h.counts) or 1.0
            for lo, hi, c in zip(h.edges, h.edges[1:], h.counts, strict=False):
                bar = "#" * round(30 * math.log10(c + 1) / top)
                lines.append(f"  {lo:8.3f}-{hi:8.3f} | {bar:<30} {c}")
        return lines

    def to_text(self) -> str:
        out = [
            f"feature {self.feature}" + (f" ({self.title})" if self.title else ""),
            *self._density_lines(),
            "",
            "top contexts ([[token]] peak, {x.x} activation):",
        ]
        for i, c in enumerate(self.contexts, 1):
            out.append(f"{i:2d}. [{c.source}] peak {c.peak:.3f}: " + _inline(c, "[[{t}]]{{{a:.1f}}}"))
        out += [
            "",
            "logit lens:",
            "  promotes:   " + _tokens(self.logit_lens["promoted"]),
            "  suppresses: " + _tokens(self.logit_lens["suppressed"]),
        ]
        return "\n".join(out)

    def to_markdown(self) -> str:
        out = [
            f"### Feature {self.feature}" + (f" -- {self.title}" if self.title else ""),
            "",
            "```",
            *self._density_lines(),
            "```",
            "",
            "| # | source | peak | context |",
            "|---|---|---|---|",
        ]
        for i, c in enumerate(self.contexts, 1):
            ctx = _inline(c, "**{t}**<sub>{a:.1f}</sub>", md=True)
            out.append(f"| {i} | {c.source} | {c.peak:.2f} | {ctx} |")
        out += [
            "",
            f"Logit lens -- promotes: {_tokens(self.logit_lens['promoted'], md=True)}",
            "",
            f"Logit lens -- suppresses: {_tokens(self.logit_lens['suppressed'], md=True)}",
            "",
        ]
        return "\n".join(out)

    def to_html(self) -> str:
        rows = []
        for c in self.contexts:
            top = max(c.peak, 1e-9)
            spans = "".join(
                f'<span title="{a:.3f}" style="background:rgba(255,120,0,{min(max(a, 0.0) / top, 1.0):.2f})">'
                f"{html.escape(p).replace(chr(10), '&#8629;')}</span>"
                for p, a in zip(c.pieces, c.acts, strict=True)
            )
            rows.append(
                f"<tr><td>{html.escape(c.source)}</td><td>{c.peak:.2f}</td><td style='font-family:monospace;white-space:pre-wrap'>{spans}</td></tr>"
            )
        lens = "".join(
            f"<p><b>{name}:</b> {html.escape(_tokens(self.logit_lens[key]))}</p>"
            for name, key in (("promotes", "promoted"), ("suppresses", "suppressed"))
        )
        dens = html.escape("\n".join(self._density_lines()))
        title = html.escape(f"Feature {self.feature}" + (f" -- {self.title}" if self.title else ""))
        return (
            f"<section><h3>{title}</h3><pre>{dens}</pre><table><tr><th>source</th><th>peak</th>"
            f"<th>context</th></tr>{''.join(rows)}</table>{lens}</section>"
        )


def _fmt(x: float | None) -> str:
    return "-inf" if x is None else f"{x:.2f}"


def _tokens(entries: Sequence[dict[str, Any]], md: bool = False) -> str:
    parts = [repr(e["token"]) for e in entries]
    if md:
        parts = [f"`{p.replace('`', chr(39))}`" for p in parts]
    return " ".join(parts)


def _inline(c: ContextView, fmt: str, md: bool = False) -> str:
    """One-line rendering: tokens active at >= 1/3 of the peak are marked with ``fmt``."""
    out = []
    for p, a in zip(c.pieces, c.acts, strict=True):
        t = p.replace("\n", "\\n")
        if md:
            t = t.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;")
        if a > 0 and a >= c.peak / 3 and t.strip():
            body = t.lstrip()
            out.append(t[: len(t) - len(body)] + fmt.format(t=body, a=a))
        else:
            out.append(t)
    return "".join(out)


def context_view(tokenizer: Any, ctx: Context, pattern: re.Pattern[str]) -> ContextView:
    pieces = [tokenizer.decode([t]) for t in ctx.tokens]
    masked, flags = mask_pieces(pieces, pattern)
    return ContextView(ctx.source, ctx.peak, masked, ctx.acts, sum(flags))


def describe_feature(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    store: ContextStore,
    feature: int,
    n_contexts: int = 10,
    title: str = "",
    deny_extra: Sequence[str] = (),
    lens_k: int = 15,
) -> FeatureCard:
    """The :class:`FeatureCard` of ``feature``: statistics and contexts from ``store``, logit lens from the model."""
    if not 0 <= feature < sae.d_sae:
        raise SaesteerError(f"feature {feature} out of range; this SAE has features 0..{sae.d_sae - 1}")
    if store.d_sae != sae.d_sae:
        raise SaesteerError(f"the context store has {store.d_sae} features but the SAE {sae.d_sae}; rebuild it")
    adapter = model if isinstance(model, ArchAdapter) else ArchAdapter(model)
    acts = store.feature_acts(feature)[store.stat_mask]
    n = int(acts.numel())
    active = acts[acts > 0]
    freq = float(active.numel()) / max(n, 1)
    pattern = deny_pattern(deny_extra)
    views = [context_view(tokenizer, c, pattern) for c in store.top_contexts(feature, n_contexts)]
    return FeatureCard(
        feature=feature,
        freq=freq,
        log10_freq=math.log10(freq) if freq > 0 else None,
        mean_act=float(active.mean()) if active.numel() else 0.0,
        max_act=float(acts.max()) if n else 0.0,
        n_tokens=n,
        histogram=histogram(acts),
        contexts=views,
        logit_lens=logit_lens(adapter, tokenizer, sae, feature, lens_k),
        title=title,
    )


def cards_html(cards: Sequence[FeatureCard], title: str = "saesteer features", sections: Sequence[Any] = ()) -> str:
    """A standalone HTML page: the report ``sections`` (:class:`saesteer.report.render.Section`), then the cards."""
    from saesteer.report.render import to_html

    page = to_html(title, list(sections))
    cut = page.rindex("</body>")
    return page[:cut] + "".join(c.to_html() for c in cards) + page[cut:]
