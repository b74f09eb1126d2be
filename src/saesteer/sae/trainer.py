"""The Top-k SAE optimisation step (one object holding weights, Adam state and dead-latent counters).

Parameters live in training layout: ``W_enc_t`` [d_sae, d_in] (the encoder transposed, so its sparse
gradient is one ``embedding_bag``) and ``W_dec`` [d_sae, d_in] with unit-norm rows. Inputs are multiplied
by ``scale`` (E||x|| = sqrt(d_in)); :meth:`TopKTrainer.to_sae` folds it back so the saved SAE reads raw
activations. See :mod:`saesteer.sae.train` for the loop, checkpoints and the configuration.

Dead latents: ``tokens_since_fired`` counts, per latent, the tokens seen since it last fired. AuxK treats
a latent as dead after ``dead_tokens``; the reported ``dead_frac`` uses the one definition shared with
evaluation, zero firings in the last ``dead_window`` tokens (see :func:`saesteer.sae.metrics.activation_metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from saesteer.errors import SaesteerError
from saesteer.sae.base import SAEConfig, TopKSAE
from saesteer.sae.data_init import init_b_dec, input_scale
from saesteer.sae.kernels import StepOutput, topk_step

_PARAMS = ("W_enc_t", "b_enc", "W_dec", "b_dec")


@dataclass
class StepStats:
    """What one training step measured (on the scaled inputs)."""

    fvu: float
    auxk: float
    l0: float
    dead_frac: float  # zero firings in the last dead_window tokens
    lr: float
    aux_dead_frac: float = 0.0  # share of latents AuxK revives (no firing in dead_tokens)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TopKTrainer:
    """Weights, optimizer and dead-latent counters of a Top-k SAE under training."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int,
        *,
        lr: float,
        warmup_steps: int,
        decay_frac: float,
        total_steps: int,
        auxk_alpha: float,
        k_aux: int | None,
        dead_tokens: int,
        compute_dtype: torch.dtype,
        device: torch.device,
        seed: int,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        dead_window: int | None = None,
    ):
        if not 1 <= k <= d_sae:
            raise SaesteerError(f"Top-k SAE needs 1 <= k <= d_sae (got k={k}, d_sae={d_sae})")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        self.lr, self.warmup_steps, self.decay_frac, self.total_steps = lr, warmup_steps, decay_frac, total_steps
        self.auxk_alpha, self.dead_tokens = auxk_alpha, dead_tokens
        self.dead_window = dead_window if dead_window is not None else dead_tokens
        self.k_aux = k_aux if k_aux is not None else max(1, d_in // 2)
        self.compute_dtype, self.device = compute_dtype, device
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.empty(d_sae, d_in)
        bound = math.sqrt(6.0 / d_in)  # Kaiming-uniform directions; the norm is fixed to 1 below
        w_dec.uniform_(-bound, bound, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_enc_t = nn.Parameter(w_dec.clone().to(device))  # encoder initialised as the decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.W_dec = nn.Parameter(w_dec.to(device))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device))
        self.params = [self.W_enc_t, self.b_enc, self.W_dec, self.b_dec]
        self.scale = 1.0
        self.step = 0
        self.tokens = 0
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
        kw: dict[str, Any] = {"lr": lr, "betas": betas, "eps": eps}
        try:
            self.opt = torch.optim.Adam(self.params, fused=True, **kw)
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(self.params, foreach=True, **kw)
        self.rank, self.world = _world()
        self._ws: dict[str, torch.Tensor] = {}  # step buffers reused across steps

    # ------------------------------------------------------------------------------ init / schedule

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, b_dec_init: str) -> None:
        """Set the input scale and ``b_dec`` from a first batch (rank 0's, broadcast under torch.distributed)."""
        x = x.to(self.device).float()
        if not torch.isfinite(x).all():
            raise SaesteerError("the first activation batch holds NaN or inf; rebuild the activation cache")
        stats = torch.empty(self.d_in + 1, device=self.device)
        if self.rank == 0:
            self.scale = input_scale(x)
            stats[0] = self.scale
            stats[1:] = init_b_dec(x * self.scale, b_dec_init).to(self.device)
        if self.world > 1:
            dist.broadcast(stats, 0)
        self.scale = float(stats[0])
        self.b_dec.copy_(stats[1:])

    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, constant, then linear decay to 0 over the last ``decay_frac``."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = int(self.total_steps * self.decay_frac)
        start = self.total_steps - decay_steps
        if decay_steps > 0 and step >= start:
            return self.lr * max(0.0, (self.total_steps - step) / decay_steps)
        return self.lr

    # ------------------------------------------------------------------------------ the step

    def dead_mask(self) -> torch.Tensor:
        return self.tokens_since_fired >= self.dead_tokens

    def dead_fraction(self) -> float:
        """Share of latents with zero firings in the last ``dead_window`` tokens (0 before that many were seen)."""
        return (self.tokens_since_fired >= self.dead_window).float().mean().item()

    def aux_fraction(self, n_dead: int) -> float:
        """AuxK weight factor min(n_dead / k_aux, 1) (fewer dead latents than k_aux weigh less)."""
        return min(n_dead / self.k_aux, 1.0)

    def compute(self, x: torch.Tensor, dead: torch.Tensor | None) -> StepOutput:
        """Losses, selections and gradients for scaled inputs ``x`` [N, d_in] (AuxK over ``dead`` latents)."""
        n_dead = int(dead.sum()) if dead is not None else 0
        k_aux = min(self.k_aux, n_dead)
        return topk_step(
            x,
            self.W_enc_t,
            self.b_enc,
            self.W_dec,
            self.b_dec,
            self.k,
            dead if k_aux else None,
            k_aux,
            self.auxk_alpha * self.aux_fraction(n_dead),
            self.compute_dtype,
            self._ws,
        )

    def train_step(self, batch: torch.Tensor) -> StepStats:
        """One optimisation step on a raw activation batch [N, d_in]; raises on NaN/inf input or loss."""
        if batch.ndim != 2 or batch.shape[1] != self.d_in:
            raise SaesteerError(f"activation batch has shape {tuple(batch.shape)}; expected [N, {self.d_in}]")
        x = batch.to(self.device, non_blocking=True).float() * self.scale  # never scale the caller's tensor in place
        dead = self.dead_mask()
        out = self.compute(x, dead)
        fvu, auxk = out.fvu.item(), out.auxk.item()
        if not (math.isfinite(fvu) and math.isfinite(auxk)):
            if not torch.isfinite(x).all():
                raise SaesteerError(f"activation batch at step {self.step} holds NaN or inf values")
            raise SaesteerError(f"training loss became non-finite at step {self.step} (fvu {fvu}, auxk {auxk})")
        grads = (out.grad_W_enc_t, out.grad_b_enc, out.grad_W_dec, out.grad_b_dec)
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=self.device)
        fired[out.idx[out.vals > 0]] = True
        if self.world > 1:
            for g in grads:
                dist.all_reduce(g)
                g /= self.world
            fired_i = fired.to(torch.int32)
            dist.all_reduce(fired_i, op=dist.ReduceOp.MAX)
            fired = fired_i.bool()
        with torch.no_grad():
            g_dec = out.grad_W_dec  # keep the decoder on the unit sphere: drop the radial gradient
            tmp = self._ws.get("radial")
            if tmp is None or tmp.shape != g_dec.shape:
                tmp = self._ws["radial"] = torch.empty_like(g_dec)
            radial = torch.mul(g_dec, self.W_dec, out=tmp).sum(dim=1, keepdim=True)
            g_dec.addcmul_(self.W_dec, radial, value=-1.0)
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            lr = self.lr_at(self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min_(1e-12))
            n_tok = x.shape[0] * self.world
            self.tokens_since_fired += n_tok
            self.tokens_since_fired[fired] = 0
        self.step += 1
        self.tokens += n_tok
        return StepStats(
            fvu=fvu, auxk=auxk * self.aux_fraction(int(dead.sum())), l0=(out.vals > 0).sum().item() / x.shape[0],
            dead_frac=self.dead_fraction(), lr=lr, aux_dead_frac=self.dead_mask().float().mean().item(),
        )  # fmt: skip

    # ------------------------------------------------------------------------------ state

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor needed for an exact resume."""
        out: dict[str, torch.Tensor] = {name: getattr(self, name).detach() for name in _PARAMS}
        out["tokens_since_fired"] = self.tokens_since_fired
        out["rng_cpu"] = torch.get_rng_state()
        for i, p in enumerate(self.params):
            for key, value in self.opt.state.get(p, {}).items():
                out[f"opt.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return out

    def state_meta(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "scale": self.scale}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        for name in _PARAMS:
            param = getattr(self, name)
            if name not in tensors or tensors[name].shape != param.shape:
                raise SaesteerError(f"checkpoint lacks {name} of shape {tuple(param.shape)}; it is from another SAE")
            param.copy_(tensors[name])
        self.tokens_since_fired.copy_(tensors["tokens_since_fired"])
        torch.set_rng_state(tensors["rng_cpu"])
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = value
        sd = self.opt.state_dict()
        sd["state"] = state
        self.opt.load_state_dict(sd)
        for st in self.opt.state.values():  # the loader may cast; keep exact moments on our device
            for key, value in list(st.items()):
                if torch.is_tensor(value) and key != "step":
                    st[key] = value.to(self.device)
        self.step, self.tokens, self.scale = int(meta["step"]), int(meta["tokens"]), float(meta["scale"])

    @torch.no_grad()
    def to_sae(self, hook_name: str = "", model_name: str = "", metadata: dict[str, Any] | None = None) -> TopKSAE:
        """The trained SAE on raw (unscaled) activations, scale folded in: b_enc / s, b_dec / s."""
        cfg = SAEConfig(
            architecture="topk", d_in=self.d_in, d_sae=self.d_sae, k=self.k, hook_name=hook_name,
            model_name=model_name, apply_b_dec_to_input=True, dtype="float32",
            metadata={"input_scale_folded": self.scale, "trained_tokens": self.tokens, **(metadata or {})},
        )  # fmt: skip
        sae = TopKSAE(cfg)
        sae.W_enc.copy_(self.W_enc_t.detach().T.cpu())
        sae.b_enc.copy_(self.b_enc.detach().cpu() / self.scale)
        sae.W_dec.copy_(self.W_dec.detach().cpu())
        sae.b_dec.copy_(self.b_dec.detach().cpu() / self.scale)
        return sae.eval()
