#!/usr/bin/env python
"""Distil the packaged face DCGAN (the teacher) into a small StyleGAN2 (the student). Issue 6.

A training tool, not part of the library API. The student is our :class:`stylegan_ops.Generator` at
64x64 whose mapping network takes the *teacher's* z (z_dim = 100, ``z = default_rng(seed).standard_normal``
as everywhere in the project), so every student image has a teacher counterpart for the same seed.
Losses on each batch of teacher pairs ``(z, T(z))``:

* paired regression ``l1 * |G(z) - T(z)|`` (mean over pixels) and ``lpips * LPIPS_alex(G(z), T(z))``;
* optional non-saturating adversarial loss ``adv * softplus(-D(G(z)))`` against a small residual
  discriminator trained on teacher images, with lazy R1 (``r1_gamma`` every ``r1_interval`` steps);
* ``G_ema``: exponential moving average of the generator weights (half-life ``ema_kimg`` thousand
  images), the network that is evaluated and shipped.

Why 64 px and not 32: labelling 2,000 teacher faces after 64 -> 32 -> 64 px resampling moved the
gender marginal by TV 0.24 (age 0.036, smile 0.023), far beyond the 0.05 budget (see the model card).

Teacher samples are made on the fly (the DCGAN forward is ~10% of a training step, and the hints
need its intermediate features, so a cache of images would save little): step ``k`` uses seeds
``TRAIN_SEED0 + seed * 2**36 + k * batch + [0, batch)``, far above the seeds < 2**30 used by probes and
evaluation. Every random draw of step ``k`` comes from ``(seed, k)``, so a run resumed from a checkpoint
continues exactly as if it had not stopped (up to floating-point non-determinism of threaded kernels).

Feature hints (FitNets-style): at the resolutions ``hint_res``, a 1x1 convolution (training only, not
shipped) maps the student's block features to the teacher's ReLU features of the same resolution;
their squared error (normalised by the teacher features' second moment) is added with weight ``hint``.

Commands (run from the repository root)::

    python tools/distill_stylegan2_faces.py train  --run runs/stylegan2_faces/main --kimg 2000 \
        --minutes 600 [config options, e.g. --adv 0.1 --hint 1]
    python tools/distill_stylegan2_faces.py export --run runs/stylegan2_faces/main \
        --out latent_balance/models/stylegan2_faces.pt [--snapshot KIMG]

``--device cuda`` trains on a GPU (not bit-reproducible); ``tools/gpu_distill.sh`` runs several
configurations side by side on one GPU and exports snapshot averages for the choice on the CPU.

``train`` on an existing run directory resumes from ``checkpoint.pt`` (the config stored in the run
is used; config options given on the command line must agree with it). Files in the run directory:
``config.json``, ``checkpoint.pt`` (atomic, every ``--checkpoint-minutes``), ``log.jsonl`` (one JSON
line per tick: kimg, wall time, seconds per kimg, mean losses; one per evaluation: held-out paired
L1 / LPIPS of G_ema), ``snapshots/ema_<kimg>.pt`` (G_ema in our safe format at each evaluation).
SIGTERM / SIGINT write a checkpoint and exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latent_balance._utils import atomic_path, atomic_write_text, package_versions  # noqa: E402
from latent_balance.seeds import z_from_seeds  # noqa: E402

#: First seed of the teacher training pairs (far above the seeds < 2**30 of probes and evaluation).
TRAIN_SEED0 = 2**40
#: Seeds of the fixed held-out pairs used for the periodic G_ema evaluation (below 2**30, but far
#: above the ranges used by the evaluation script and the probe sets).
HELDOUT_SEED0 = 900_000_000


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Config:
    """Everything that defines a run (stored in ``config.json``)."""

    resolution: int = 64
    w_dim: int = 128
    map_layers: int = 4
    map_lr_mult: float = 0.1
    channel_base: int = 1024          # channels at resolution R: min(channel_base // R, channel_max)
    channel_max: int = 128
    d_arch: str = "resnet"            # "resnet" (whole image -> 1 logit) or "patch" (PatchGAN: 8x8 logits)
    d_channel_base: int = 1024
    d_channel_max: int = 128
    batch: int = 32
    lr_g: float = 0.002
    lr_d: float = 0.002
    betas: tuple = (0.0, 0.99)        # Adam betas of G (and of D, except beta1: d_beta1)
    d_beta1: float = 0.0
    l1: float = 1.0
    lpips: float = 1.0
    adv: float = 0.1
    hint: float = 1.0                 # weight of the feature hints (student block features -> teacher layers)
    hint_res: tuple = (8, 16, 32)     # resolutions with a hint (teacher ReLU outputs exist at 4..32)
    r1_gamma: float = 0.05
    r1_interval: int = 16
    ema_kimg: float = 5.0
    ema_rampup: float = 0.05          # EMA half-life at most ema_rampup * kimg done
    seed: int = 0
    channels_last: bool = False
    fused_modconv: bool = False

    def generator_kwargs(self) -> dict:
        return dict(z_dim=100, c_dim=0, w_dim=self.w_dim, img_resolution=self.resolution, img_channels=3,
                    mapping_kwargs={"num_layers": self.map_layers, "lr_multiplier": self.map_lr_mult},
                    synthesis_kwargs={"channel_base": self.channel_base, "channel_max": self.channel_max,
                                      "use_noise": False})


_TUPLE_FIELDS = {"betas": float, "hint_res": int}


def _cfg_from_dict(d: dict) -> Config:
    return Config(**{k: (tuple(v) if k in _TUPLE_FIELDS else v) for k, v in d.items()})


def _config_from_args(args, base: Config | None = None) -> Config:
    cfg = dataclasses.replace(base) if base is not None else Config()
    for f in dataclasses.fields(Config):
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if f.name in _TUPLE_FIELDS:
            v = tuple(v)
        if base is not None and v != getattr(base, f.name):
            raise SystemExit(f"--{f.name.replace('_', '-')}={v} differs from the run's stored config "
                             f"({getattr(base, f.name)}); start a new run directory to change it")
        setattr(cfg, f.name, v)
    return cfg


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------
class _EqConv(nn.Module):
    """3x3 (or kxk) convolution with equalized learning rate (weights stored at unit variance)."""

    def __init__(self, cin: int, cout: int, k: int = 3, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * k * k)
        self.pad = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.pad)


class _EqLinear(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1 / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain, self.bias)


def _lrelu(x):
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class _DBlock(nn.Module):
    """Residual block: two 3x3 convs then 2x average pooling; skip = pool + 1x1 conv; sum / sqrt(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = _EqConv(cin, cin)
        self.conv1 = _EqConv(cin, cout)
        self.skip = _EqConv(cin, cout, k=1, bias=False)

    def forward(self, x):
        y = F.avg_pool2d(_lrelu(self.conv1(_lrelu(self.conv0(x)))), 2)
        s = self.skip(F.avg_pool2d(x, 2))
        return (y + s) * (1 / math.sqrt(2))


class Discriminator(nn.Module):
    """Small residual discriminator: images [N, 3, R, R] in [-1, 1] -> logits [N]."""

    def __init__(self, resolution: int = 64, channel_base: int = 2048, channel_max: int = 128, mbstd_group: int = 4):
        super().__init__()
        ch = lambda r: min(channel_base // r, channel_max)  # noqa: E731
        self.from_rgb = _EqConv(3, ch(resolution), k=1)
        blocks = []
        r = resolution
        while r > 4:
            blocks.append(_DBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd_group = mbstd_group
        self.conv = _EqConv(ch(4) + 1, ch(4))
        self.fc = _EqLinear(ch(4) * 16, ch(4))
        self.out = _EqLinear(ch(4), 1)

    def forward(self, img):
        x = _lrelu(self.from_rgb(img))
        x = self.blocks(x)
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        if n % g:
            g = 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[1, 2, 3])  # [n/g]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        x = torch.cat([x, y], 1)
        x = _lrelu(self.conv(x))
        x = _lrelu(self.fc(x.flatten(1)))
        return self.out(x).squeeze(1)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: three 4x4 stride-2 convolutions (channels c, 2c, 4c) and a 3x3 output
    convolution; images [N, 3, R, R] -> logits [N, R/8 * R/8], each judging a ~30 px patch. Cheap, and
    aimed at local sharpness (the paired losses take care of the global layout)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.convs = nn.ModuleList([_EqConv4s2(3, c), _EqConv4s2(c, 2 * c), _EqConv4s2(2 * c, 4 * c)])
        self.out = _EqConv(4 * c, 1)

    def forward(self, img):
        x = img
        for conv in self.convs:
            x = _lrelu(conv(x))
        return self.out(x).flatten(1)


class _EqConv4s2(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 4, 4))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.gain = 1 / math.sqrt(cin * 16)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, stride=2, padding=1)


def build_discriminator(cfg: "Config") -> nn.Module:
    if cfg.d_arch == "patch":
        return PatchDiscriminator(min(cfg.d_channel_base // cfg.resolution, cfg.d_channel_max))
    if cfg.d_arch == "resnet":
        return Discriminator(cfg.resolution, cfg.d_channel_base, cfg.d_channel_max)
    raise SystemExit(f"d_arch must be 'resnet' or 'patch', got {cfg.d_arch!r}")


def build_generator(cfg: Config):
    import stylegan_ops

    G = stylegan_ops.Generator(**cfg.generator_kwargs())
    if cfg.channels_last:
        G.set_channels_last(True)
    return G


# ------------------------------------------------------------------------------------------------
# Teacher samples
# ------------------------------------------------------------------------------------------------
def _teacher(device: str = "cpu"):
    from latent_balance import DCGANFaces

    return DCGANFaces(device=device, batch_size=256)


#: Teacher layers whose outputs serve as hints: index in ``DCGANFaces.net.main`` of the ReLU that ends
#: the block at each resolution (4: 512 channels, 8: 256, 16: 128, 32: 64).
_TEACHER_RELU = {4: 2, 8: 5, 16: 8, 32: 11}
_TEACHER_CH = {4: 512, 8: 256, 16: 128, 32: 64}


class _LiveSource:
    """Teacher pairs made on the fly: batch k uses seeds ``TRAIN_SEED0 + seed * 2**36 + k * b + [0, b)``.

    ``batch`` returns z [b, 100], the teacher image [b, 3, 64, 64] rounded to uint8 levels (as saved
    images are) and the teacher's ReLU features {R: [b, C_R, R, R]} at the hint resolutions.
    """

    def __init__(self, hint_res=(), device: str = "cpu"):
        self.device = torch.device(device)
        self.teacher = _teacher(device)
        self.hint_res = tuple(hint_res)
        self.meta = {"teacher": self.teacher.id, "train_seed0": TRAIN_SEED0}

    def batch(self, seed: int, step: int, b: int):
        start = TRAIN_SEED0 + seed * 2**36 + step * b
        z = torch.from_numpy(z_from_seeds(np.arange(start, start + b, dtype=np.int64), 100)).to(self.device)
        feats = {}
        with torch.no_grad():
            x = z[:, :, None, None]
            for i, layer in enumerate(self.teacher.net.main):
                x = layer(x)
                for r, idx in _TEACHER_RELU.items():
                    if idx == i and r in self.hint_res:
                        feats[r] = x
        img = ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
        return z, img, feats


def synthesis_with_features(G, ws: torch.Tensor, fused_modconv: bool, noise_mode: str = "none"):
    """``G.synthesis(ws)`` run block by block, also returning each block's features {R: [N, C_R, R, R]}.

    Mirrors :meth:`stylegan_ops.SynthesisNetwork.forward` (checked against it in tests/test_stylegan2_faces.py).
    """
    syn = G.synthesis
    x = img = None
    w_idx = 0
    feats = {}
    for res in syn.block_resolutions:
        block = getattr(syn, f"b{res}")
        cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
        w_idx += block.num_conv
        x, img = block(x, img, cur, fused_modconv=fused_modconv, noise_mode=noise_mode,
                       channels_last=syn.channels_last)
        feats[res] = x
    return img, feats


def _resize(img: torch.Tensor, res: int) -> torch.Tensor:
    if img.shape[-1] == res:
        return img
    return F.interpolate(img, size=(res, res), mode="bilinear", align_corners=False, antialias=True)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, cfg: Config, run: Path, source, threads: int, device: str = "cpu"):
        import copy

        from latent_balance.lpips import LPIPS

        self.cfg, self.run, self.source = cfg, run, source
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)  # initial weights drawn on the CPU, then moved: same start on every device
        self.G = build_generator(cfg).train()
        self.D = build_discriminator(cfg).train()
        if cfg.channels_last:
            self.D = self.D.to(memory_format=torch.channels_last)
        # hint heads: 1x1 convolutions from the student's block features to the teacher's ReLU features
        chans = {r: getattr(self.G.synthesis, f"b{r}").conv1.out_channels for r in cfg.hint_res}
        self.H = nn.ModuleDict({str(r): nn.Conv2d(chans[r], _TEACHER_CH[r], 1) for r in cfg.hint_res})
        self.G, self.D, self.H = self.G.to(self.device), self.D.to(self.device), self.H.to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(list(self.G.parameters()) + list(self.H.parameters()), lr=cfg.lr_g,
                                      betas=tuple(cfg.betas), eps=1e-8)
        mb = cfg.r1_interval / (cfg.r1_interval + 1)  # lazy-regularization correction of lr and betas
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d * mb,
                                      betas=(cfg.d_beta1 ** mb, cfg.betas[1] ** mb), eps=1e-8)
        self.lpips = LPIPS("alex", device=self.device).requires_grad_(False) if cfg.lpips > 0 else None
        self.step = 0
        self.elapsed = 0.0  # training seconds over all stretches
        self.prior = _no_prior()  # training before this run (--init-from)
        self.threads = threads
        self.heldout_z = torch.from_numpy(z_from_seeds(np.arange(HELDOUT_SEED0, HELDOUT_SEED0 + 256), 100)).to(self.device)
        self._heldout_img = None

    # -- state -------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"G": self.G.state_dict(), "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(),
                "H": self.H.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "step": self.step,
                "elapsed": self.elapsed, "config": dataclasses.asdict(self.cfg), "prior": json.dumps(self.prior),
                "device_name": _device_name(self)}

    def load(self, st: dict) -> None:
        self.G.load_state_dict(st["G"])
        self.G_ema.load_state_dict(st["G_ema"])
        self.D.load_state_dict(st["D"])
        self.H.load_state_dict(st["H"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.step = int(st["step"])
        self.elapsed = float(st["elapsed"])
        self.prior = _prior_of(st)

    def init_from(self, run: Path) -> None:
        """Start from another run's generator (G, G_ema, hint heads; optimizer and D fresh)."""
        st = torch.load(Path(run) / "checkpoint.pt", map_location="cpu", weights_only=True)
        other = _cfg_from_dict(st["config"])
        if other.generator_kwargs() != self.cfg.generator_kwargs():
            raise SystemExit(f"--init-from {run}: its generator {other.generator_kwargs()} differs from this "
                             f"run's {self.cfg.generator_kwargs()}")
        self.G.load_state_dict(st["G"])
        self.G_ema.load_state_dict(st["G_ema"])
        if other.hint_res == self.cfg.hint_res:
            self.H.load_state_dict(st["H"])
        prior = _prior_of(st)
        kimg = st["step"] * other.batch / 1000
        self.prior = {"kimg": prior["kimg"] + kimg, "hours": prior["hours"] + st["elapsed"] / 3600,
                      "runs": prior["runs"] + [{"run": str(run), "kimg": kimg, "hours": st["elapsed"] / 3600,
                                                "config": st["config"]}]}

    def save_checkpoint(self) -> None:
        with atomic_path(self.run / "checkpoint.pt", suffix=".pt.tmp") as tmp:
            torch.save(self.state(), tmp)

    @property
    def kimg(self) -> float:
        return self.step * self.cfg.batch / 1000

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg = self.cfg
        z, real, tfeats = self.source.batch(cfg.seed, self.step, cfg.batch)
        real = _resize(real, cfg.resolution)
        if cfg.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        out: dict = {}
        fm = cfg.fused_modconv
        # --- G: paired regression + adversarial
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        ws = self.G.mapping(z, None, update_emas=True)
        fake, sfeats = synthesis_with_features(self.G, ws, fused_modconv=fm)
        loss = 0.0
        if cfg.hint > 0:
            hl = 0.0
            for r in cfg.hint_res:
                t = tfeats[r]
                hl = hl + (self.H[str(r)](sfeats[r]) - t).square().mean() / t.square().mean().clamp_min(1e-8)
            hl = hl / len(cfg.hint_res)
            out["hint"] = hl.item()
            loss = loss + cfg.hint * hl
        if cfg.l1 > 0:
            l1 = (fake - real).abs().mean()
            out["l1"] = l1.item()
            loss = loss + cfg.l1 * l1
        if self.lpips is not None:
            lp = self.lpips(fake.clamp(-1, 1), real).mean()
            out["lpips"] = lp.item()
            loss = loss + cfg.lpips * lp
        if cfg.adv > 0:
            g_adv = F.softplus(-self.D(fake)).mean()
            out["g_adv"] = g_adv.item()
            loss = loss + cfg.adv * g_adv
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        # --- D
        if cfg.adv > 0:
            self.G.requires_grad_(False)
            self.D.requires_grad_(True)
            d_fake = self.D(fake.detach())
            d_real = self.D(real)
            d_loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
            out["d_loss"] = d_loss.item()
            out["d_real"] = d_real.mean().item()
            out["d_fake"] = d_fake.mean().item()
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if cfg.r1_gamma > 0 and self.step % cfg.r1_interval == 0:
                r = real.detach().requires_grad_(True)
                logits = self.D(r).reshape(len(r), -1).mean(1)  # per image (patch D: mean over patches)
                (grad,) = torch.autograd.grad(logits.sum(), r, create_graph=True)
                r1 = grad.square().sum(dim=[1, 2, 3]).mean()
                out["r1"] = r1.item()
                (r1 * (cfg.r1_gamma / 2) * cfg.r1_interval).backward()
            self.opt_d.step()
        # --- EMA
        half_life = cfg.ema_kimg * 1000
        if cfg.ema_rampup:
            half_life = min(half_life, (self.kimg + cfg.batch / 1000) * 1000 * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(half_life, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.lerp_(p, 1 - beta)
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(b)
        self.step += 1
        return out

    # -- evaluation ----------------------------------------------------------------------------------
    def heldout_metrics(self) -> dict:
        if self._heldout_img is None:
            with torch.no_grad():
                self._heldout_img = _resize(self.source.teacher.synthesize(self.heldout_z), self.cfg.resolution)
        with torch.no_grad():
            img = self.G_ema(self.heldout_z, None, noise_mode="const").clamp(-1, 1)
            out = {"heldout_l1": float((img - self._heldout_img).abs().mean())}
            if self.lpips is not None:
                out["heldout_lpips"] = float(self.lpips(img, self._heldout_img).mean())
            else:
                from latent_balance.lpips import LPIPS

                out["heldout_lpips"] = float(LPIPS("alex", device=self.device)(img, self._heldout_img).mean())
        return out


def _log(run: Path, rec: dict) -> None:
    with open(run / "log.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def cmd_train(args) -> None:
    import stylegan_ops

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "config.json"
    if cfg_path.exists():
        cfg = _config_from_args(args, _cfg_from_dict(json.loads(cfg_path.read_text())["config"]))
    else:
        cfg = _config_from_args(args)
        atomic_write_text(cfg_path, json.dumps({"config": dataclasses.asdict(cfg), "command": " ".join(sys.argv),
                                                "versions": package_versions(), "platform": platform.platform()},
                                               indent=1))
    source = _LiveSource(cfg.hint_res if cfg.hint > 0 else (), device=args.device)
    tr = _Trainer(cfg, run, source, args.threads, device=args.device)
    ckpt = run / "checkpoint.pt"
    if ckpt.exists():
        tr.load(torch.load(ckpt, map_location="cpu", weights_only=True))
        print(f"resumed {run} at step {tr.step} ({tr.kimg:.1f} kimg, {tr.elapsed / 3600:.2f} h)", flush=True)
    elif args.init_from:
        tr.init_from(Path(args.init_from))
        print(f"initialized from {args.init_from} ({tr.prior['kimg']:.1f} kimg before this run)", flush=True)
    (run / "snapshots").mkdir(exist_ok=True)

    stop = {"flag": False}

    def _handler(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)

    t_start = time.perf_counter()
    t_ckpt = t_start
    tick_start_kimg, tick_t = tr.kimg, time.perf_counter()
    sums: dict = {}
    count = 0
    next_eval = (math.floor(tr.kimg / args.eval_kimg) + 1) * args.eval_kimg
    _log(run, {"event": "start", "step": tr.step, "kimg": tr.kimg, "time": time.time(), "threads": args.threads,
               "load_avg": os.getloadavg(), "argv": sys.argv})
    while tr.kimg < args.kimg and not stop["flag"]:
        t0 = time.perf_counter()
        losses = tr.train_step()
        tr.elapsed += time.perf_counter() - t0
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        now = time.perf_counter()
        if tr.kimg - tick_start_kimg >= args.tick_kimg:
            rec = {"event": "tick", "step": tr.step, "kimg": round(tr.kimg, 3),
                   "total_kimg": round(tr.kimg + tr.prior["kimg"], 3),
                   "sec_per_kimg": (now - tick_t) / (tr.kimg - tick_start_kimg),
                   "train_hours": tr.elapsed / 3600, "load_avg": os.getloadavg()[0],
                   **{k: v / count for k, v in sums.items()}}
            _log(run, rec)
            print(json.dumps(rec), flush=True)
            sums, count = {}, 0
            tick_start_kimg, tick_t = tr.kimg, now
        if tr.kimg >= next_eval:
            te = time.perf_counter()
            m = tr.heldout_metrics()
            snap = run / "snapshots" / f"ema_{int(round(tr.kimg)):06d}.pt"
            stylegan_ops.save_generator(tr.G_ema, snap, metadata=_metadata(tr, cfg, source.meta))
            rec = {"event": "eval", "step": tr.step, "kimg": round(tr.kimg, 3), "train_hours": tr.elapsed / 3600,
                   "total_kimg": round(tr.kimg + tr.prior["kimg"], 3),
                   "eval_seconds": time.perf_counter() - te, "snapshot": snap.name, **m}
            _log(run, rec)
            print(json.dumps(rec), flush=True)
            next_eval += args.eval_kimg
            tick_t += time.perf_counter() - te  # evaluation time is not training time
        if now - t_ckpt > args.checkpoint_minutes * 60:
            tr.save_checkpoint()
            t_ckpt = time.perf_counter()
        if args.minutes and now - t_start > args.minutes * 60:
            break
    tr.save_checkpoint()
    _log(run, {"event": "stop", "step": tr.step, "kimg": tr.kimg, "train_hours": tr.elapsed / 3600,
               "time": time.time(), "reason": "signal" if stop["flag"] else "limit"})
    print(f"stopped at {tr.kimg:.1f} kimg ({tr.elapsed / 3600:.2f} h of training)", flush=True)


def _no_prior() -> dict:
    """Training that came before a run (via --init-from): none."""
    return {"kimg": 0.0, "hours": 0.0, "runs": []}


def _prior_of(checkpoint: dict) -> dict:
    """The prior training recorded in a checkpoint (none for checkpoints written before --init-from existed)."""
    return json.loads(checkpoint["prior"]) if "prior" in checkpoint else _no_prior()


def _device_name(tr: _Trainer) -> str:
    """Where this stretch of training ran, for the metadata (earlier stretches are in ``earlier_runs``)."""
    if tr.device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(tr.device)})"
    return f"cpu ({tr.threads} threads, shared)"


def _metadata(tr: _Trainer, cfg: Config, source_meta: dict) -> dict:
    """Plain-JSON metadata stored with each exported G_ema (totals include --init-from runs)."""
    return json.loads(json.dumps({"kind": "stylegan2-faces distilled from dcgan-faces", "teacher": source_meta.get("teacher"),
            "kimg": round(tr.kimg + tr.prior["kimg"], 3), "step": tr.step,
            "train_hours": round(tr.elapsed / 3600 + tr.prior["hours"], 4), "this_run_kimg": round(tr.kimg, 3),
            "earlier_runs": [{k: v for k, v in r.items() if k != "config"} for r in tr.prior["runs"]],
            "config": dataclasses.asdict(cfg), "device": _device_name(tr),
            "torch": str(torch.__version__)}))


def cmd_export(args) -> None:
    """Copy G_ema (of the checkpoint or of a snapshot) to `--out` in our safe format, with metadata."""
    import stylegan_ops

    run = Path(args.run)
    if args.average:
        if args.snapshot is not None:
            raise SystemExit("give --snapshot or --average, not both")
        snaps = [run / "snapshots" / f"ema_{int(k):06d}.pt" for k in args.average]
        nets = [stylegan_ops.load_generator(p) for p in snaps]
        G = nets[0]
        with torch.no_grad():
            states = [g.state_dict() for g in nets]
            G.load_state_dict({k: torch.stack([st[k] for st in states]).mean(0) if v.is_floating_point() else v
                               for k, v in states[0].items()})
        meta = dict(torch.load(snaps[-1], map_location="cpu", weights_only=True).get("metadata", {}),
                    averaged_snapshots_kimg=[int(k) for k in args.average])
    elif args.snapshot is not None:
        snap = run / "snapshots" / f"ema_{int(args.snapshot):06d}.pt"
        G = stylegan_ops.load_generator(snap)
        meta = torch.load(snap, map_location="cpu", weights_only=True).get("metadata", {})
    else:
        st = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
        cfg = _cfg_from_dict(st["config"])
        tr = _Trainer.__new__(_Trainer)  # only the bookkeeping fields that _metadata reads
        tr.cfg, tr.step, tr.elapsed, tr.threads = cfg, int(st["step"]), float(st["elapsed"]), args.threads
        tr.prior, tr.device = _prior_of(st), torch.device("cpu")
        G = build_generator(cfg)
        G.load_state_dict(st["G_ema"])
        meta = _metadata(tr, cfg, {"teacher": _teacher().id})
        if "device_name" in st:  # absent from checkpoints written before --device existed (CPU runs)
            meta["device"] = st["device_name"]
    G.set_channels_last(False)
    source = ("average of snapshots " + ",".join(map(str, args.average)) if args.average
              else str(args.snapshot) if args.snapshot is not None else "checkpoint")
    meta = dict(meta, exported_from=source)
    stylegan_ops.save_generator(G.eval(), args.out, metadata=meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB): {json.dumps(meta)[:300]}")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Config):
        name = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(name, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        elif f.name in _TUPLE_FIELDS:
            p.add_argument(name, type=_TUPLE_FIELDS[f.name], nargs="+", default=None)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type if callable(f.type) else float)
            p.add_argument(name, type=typ, default=None)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="train or resume")
    p.add_argument("--run", required=True)
    p.add_argument("--kimg", type=float, default=1000)
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (0 = no limit)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; GPU runs are not bit-reproducible")
    p.add_argument("--tick-kimg", type=float, default=1.0)
    p.add_argument("--eval-kimg", type=float, default=20.0)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--init-from", default=None, help="new run only: start from this run's checkpoint (G, G_ema)")
    _add_config_args(p)
    p = sub.add_parser("export", help="G_ema -> our safe format")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--snapshot", type=int, default=None, help="kimg of a snapshot (default: the checkpoint)")
    p.add_argument("--average", type=int, nargs="+", default=None, metavar="KIMG",
                   help="average the weights of these snapshots (a longer EMA window; metadata of the last)")
    p.add_argument("--threads", type=int, default=1, help="threads the run used (recorded in the metadata)")
    args = ap.parse_args(argv)
    {"train": cmd_train, "export": cmd_export}[args.cmd](args)


if __name__ == "__main__":
    main()
