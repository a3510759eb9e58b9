"""Training loop: train on Training, select on PublicTest, report on PrivateTest (torch).

Data augmentation runs on the training device as batched tensor ops (one affine grid_sample per
batch, vectorised erasing masks), so a GPU is never starved by CPU-side per-sample transforms.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import PUBLIC, TRAIN, FerData, ferplus_soft_targets, load_data
from .model import EmotionNet, build_model

log = logging.getLogger("inference.training")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def augment(x: torch.Tensor, aug: dict[str, Any]) -> torch.Tensor:
    """Random flip/rotate/scale/translate, brightness/contrast and erasing; x normalised [B,1,H,W]."""
    b, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, device=dev) * (hi - lo) + lo

    ang = u(-1, 1) * math.radians(aug.get("rotate_deg", 10.0))
    scale = 1.0 + u(-1, 1) * aug.get("scale", 0.1)
    tr = aug.get("translate", 0.1) * 2.0  # affine_grid works in [-1, 1]
    flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, u(-tr, tr)], 1),
            torch.stack([sin * flip, cos, u(-tr, tr)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    bc = aug.get("brightness", 0.3)
    cc = aug.get("contrast", 0.3)
    x = x * u(1 - cc, 1 + cc).view(b, 1, 1, 1) + u(-bc, bc).view(b, 1, 1, 1)
    p_erase = aug.get("erase_p", 0.5)
    if p_erase > 0:
        h, w = x.shape[2], x.shape[3]
        area = u(0.02, aug.get("erase_max_area", 0.25)) * h * w
        ratio = torch.exp(u(math.log(0.3), math.log(3.3)))
        eh = torch.sqrt(area * ratio).clamp(1, h)
        ew = torch.sqrt(area / ratio).clamp(1, w)
        y0 = torch.rand(b, device=dev) * (h - eh)
        x0 = torch.rand(b, device=dev) * (w - ew)
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        m = (
            (yy >= y0.view(b, 1, 1))
            & (yy < (y0 + eh).view(b, 1, 1))
            & (xx >= x0.view(b, 1, 1))
            & (xx < (x0 + ew).view(b, 1, 1))
        )
        m &= (torch.rand(b, device=dev) < p_erase).view(b, 1, 1)
        x = torch.where(m.unsqueeze(1), torch.randn_like(x), x)
    return x


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy against a probability distribution."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1)


class Ema:
    """Exponential moving average of parameters and buffers (evaluated and exported)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm start so early EMA is not stale
        if not hasattr(self, "_pairs"):
            src, dst = model.state_dict(), self.model.state_dict()
            self._pairs = [(dst[k], v) for k, v in src.items() if v.dtype.is_floating_point]
            self._ints = [(dst[k], v) for k, v in src.items() if not v.dtype.is_floating_point]
        # one fused multi-tensor op instead of a kernel launch per tensor
        torch._foreach_lerp_([e for e, _ in self._pairs], [v for _, v in self._pairs], 1 - d)
        for e, v in self._ints:
            e.copy_(v)


@torch.no_grad()
def predict_logits(
    model: EmotionNet, x: torch.Tensor, flip_tta: bool, batch: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode logits (fp32), averaging pooled features over the mirror image if flip_tta."""
    model.eval()
    fer, fp = [], []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        h = model.embed(xb).float()
        if flip_tta:
            h = 0.5 * (h + model.embed(torch.flip(xb, dims=[3])).float())
        fer.append(model.fer_head(h))
        fp.append(model.ferplus_head(h))
    return torch.cat(fer), torch.cat(fp)


def fit_temperature(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Temperature minimising cross-entropy on the selection split (PublicTest); grid search."""
    grid = torch.linspace(0.5, 3.0, 101, device=logits.device)
    losses = torch.stack([soft_ce(logits / t, target).mean() for t in grid])
    return float(grid[losses.argmin()])


class _Split:
    """Device tensors of one split: normalised images, labels, FER+ soft targets and mask."""

    def __init__(
        self,
        data: FerData,
        idx: np.ndarray,
        soft: np.ndarray,
        valid: np.ndarray,
        mean: float,
        std: float,
        dev: torch.device,
    ) -> None:
        x = torch.from_numpy(data.images[idx]).to(dev).float().unsqueeze(1)
        self.x = ((x / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(data.labels[idx]).to(dev)
        self.fp = torch.from_numpy(soft[idx]).to(dev)
        self.m = torch.from_numpy(valid[idx]).to(dev)


def _fit(
    model: EmotionNet,
    tc: dict[str, Any],
    aug: dict[str, Any],
    tr: _Split,
    pub: _Split,
    flip_tta: bool,
    dev: torch.device,
    teacher: EmotionNet | None = None,
    tag: str = "",
) -> tuple[EmotionNet, dict[str, Any]]:
    """One training run; returns the best-on-PublicTest EMA model and its record."""
    use_cuda = dev.type == "cuda"
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": tc["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if tc.get("optimizer", "sgd") == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=tc["lr"], momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=tc["lr"])
    n = len(tr.y)
    bs, epochs = int(tc["batch_size"]), int(tc["epochs"])
    steps_per_epoch = n // bs
    total = steps_per_epoch * epochs
    warm = int(tc.get("warmup_epochs", 2) * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = Ema(model, float(tc.get("ema_decay", 0.999)))
    fwd = torch.compile(model) if tc.get("compile", False) and use_cuda else model
    ls = float(tc.get("label_smoothing", 0.1))
    w_fp = float(tc.get("ferplus_weight", 1.0))
    mix_p, mix_a = float(tc.get("mixup_p", 0.0)), float(tc.get("mixup_alpha", 0.4))
    kd_w, kd_t = float(tc.get("kd_weight", 0.0)), float(tc.get("kd_temperature", 2.0))
    eval_every = int(tc.get("eval_every", 1))
    max_s = float(tc.get("max_minutes", 1e9)) * 60
    onehot = torch.eye(7, device=dev)
    if teacher is not None:
        teacher.eval()

    best: dict[str, Any] = {"score": -1.0}
    history: list[dict[str, Any]] = []
    t0 = time.time()
    step = 0
    ep = 0
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, device=dev)
        tot_loss = torch.zeros((), device=dev)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            xb = augment(tr.x[idx], aug)
            t_fer = onehot[tr.y[idx]] * (1 - ls) + ls / 7
            t_fp, m_fp = tr.fp[idx], tr.m[idx].float()
            if mix_p > 0 and random.random() < mix_p:
                lam = float(np.random.beta(mix_a, mix_a))
                j = torch.randperm(bs, device=dev)
                xb = lam * xb + (1 - lam) * xb[j]
                t_fer = lam * t_fer + (1 - lam) * t_fer[j]
                t_fp = lam * t_fp + (1 - lam) * t_fp[j]
                m_fp = m_fp * m_fp[j]
            xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_cuda):
                lf, lp = fwd(xb)
                if teacher is not None:
                    with torch.no_grad():
                        tf, tp = teacher(xb)
            hard = soft_ce(lf, t_fer).mean() + w_fp * (soft_ce(lp, t_fp) * m_fp).sum() / (
                m_fp.sum().clamp(min=1)
            )
            if teacher is not None and kd_w > 0:
                # function matching: the teacher labels the same augmented (mixed) batch
                soft = (
                    soft_ce(lf / kd_t, F.softmax(tf.float() / kd_t, 1)).mean()
                    + w_fp * soft_ce(lp / kd_t, F.softmax(tp.float() / kd_t, 1)).mean()
                )
                loss = (1 - kd_w) * hard + kd_w * kd_t * kd_t * soft
            else:
                loss = hard
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update(model, step)
            step += 1
            tot_loss += loss.detach()
        elapsed = time.time() - t0
        last = ep == epochs - 1 or elapsed > max_s
        if (ep + 1) % eval_every == 0 or last:
            lf, lp = predict_logits(ema.model, pub.x, flip_tta)
            acc = float((lf.argmax(1) == pub.y).float().mean())
            acc_fp = float((lp[pub.m].argmax(1) == pub.fp[pub.m].argmax(1)).float().mean())
            score = acc if tc.get("select", "fer") == "fer" else 0.5 * (acc + acc_fp)
            rec = {
                "run": tag,
                "epoch": ep + 1,
                "loss": round(float(tot_loss) / steps_per_epoch, 4),
                "public_fer_acc": round(acc, 4),
                "public_ferplus_acc": round(acc_fp, 4),
                "s": round(elapsed, 1),
            }
            history.append(rec)
            log.info(json.dumps(rec))
            if score > best["score"]:
                best = {
                    "score": score,
                    "epoch": ep + 1,
                    "public_fer_acc": acc,
                    "public_ferplus_acc": acc_fp,
                    "state": copy.deepcopy(ema.model.state_dict()),
                }
        if elapsed > max_s:
            log.warning("%s: time budget reached after epoch %d", tag, ep + 1)
            break
    ema.model.load_state_dict(best.pop("state"))
    ema.model.eval()
    return ema.model, {
        **best,
        "epochs_run": ep + 1,
        "train_seconds": round(time.time() - t0, 1),
        "history": history,
    }


def train(cfg: dict[str, Any], data: FerData, device: str) -> tuple[EmotionNet, dict[str, Any]]:
    """Train per cfg (optionally a teacher first, then the distilled student).

    Returns the selected (EMA) student on CPU and a summary incl. calibration temperatures.
    """
    seed_everything(int(cfg["seed"]))
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tr_idx = data.split(TRAIN)
    soft_fp, valid_fp = ferplus_soft_targets(data.votes)
    mean = float(data.images[tr_idx].mean() / 255.0)
    std = float(data.images[tr_idx].std() / 255.0)
    if cfg["train"].get("drop_not_face_train", True):
        # training-set cleaning only: rows FER+ annotators call unknown/not-a-face (mostly blank
        # images) carry arbitrary FER2013 labels; test splits are left untouched
        tr_idx = tr_idx[valid_fp[tr_idx]]
    tr = _Split(data, tr_idx, soft_fp, valid_fp, mean, std, dev)
    pub = _Split(data, data.split(PUBLIC), soft_fp, valid_fp, mean, std, dev)
    flip_tta = bool(cfg["export"].get("flip_tta", False))
    aug = cfg["augment"]
    log.info("train rows %d, device %s", len(tr_idx), dev)

    teacher, t_summary = None, None
    if "teacher" in cfg:
        tcfg = cfg["teacher"]
        tmodel = build_model(tcfg["model"]).to(dev).to(memory_format=torch.channels_last)
        log.info("teacher params %.3fM", sum(p.numel() for p in tmodel.parameters()) / 1e6)
        teacher, t_summary = _fit(
            tmodel,
            {**cfg["train"], **tcfg.get("train", {}), "kd_weight": 0.0},
            aug,
            tr,
            pub,
            flip_tta,
            dev,
            tag="teacher",
        )
    model = build_model(cfg["model"]).to(dev).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model params %.3fM", n_params / 1e6)
    sel, best = _fit(
        model,
        cfg["train"],
        aug,
        tr,
        pub,
        flip_tta,
        dev,
        teacher=teacher,
        tag="student" if teacher is not None else "model",
    )
    lf, lp = predict_logits(sel, pub.x, flip_tta)
    onehot = torch.eye(7, device=dev)
    t_fer = fit_temperature(lf, onehot[pub.y])
    t_fp = fit_temperature(lp[pub.m], pub.fp[pub.m])
    summary = {
        **best,
        "temperature_fer": t_fer,
        "temperature_ferplus": t_fp,
        "params": n_params,
        "normalization": {"scale": 1 / 255, "mean": mean, "std": std},
    }
    if t_summary is not None:
        summary["teacher"] = {k: v for k, v in t_summary.items()}
    return sel.cpu().float(), summary


def load_config(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def run(cfg: dict[str, Any], data_path: str | None, device: str) -> tuple[EmotionNet, dict]:
    data = load_data(data_path)
    return train(cfg, data, device)
