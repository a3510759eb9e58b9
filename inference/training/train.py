"""Training loop: train on Training, select on PublicTest (+ the real-face development crops), report on
PrivateTest (torch).

Data augmentation (augment.py) runs on the training device as batched tensor ops, so a GPU is never
starved by CPU-side per-sample transforms. A run starts from random weights, or from an exported ONNX file
(`init.from_onnx`, recover.py) to fine-tune it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import FER_LABELS, FERPLUS_LABELS
from .augment import augment_pair
from .data import PUBLIC, TRAIN, FerData, ferplus_soft_targets, load_data, real_selection_crops, repo_root
from .evaluate import read_metadata
from .model import EmotionNet, build_model
from .recover import recover_net

log = logging.getLogger("inference.training")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


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


def normalised(images: np.ndarray, mean: float, std: float, dev: torch.device) -> torch.Tensor:
    """uint8 [N, 48, 48] -> the model's input [N, 1, 48, 48] on `dev`."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(dev).float().unsqueeze(1)
    return ((x / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)


class RealCrops:
    """The product pipeline's crops of the real-face development photos, for selection only: the recall of
    each of their labels by each head (balanced: the mean over labels)."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, mean: float, std: float, dev: torch.device):
        self.x = normalised(crops, mean, std, dev)
        self.names = sorted(set(labels.tolist()))
        self.labels = labels

    def balanced_recall(self, logits: torch.Tensor, head_labels: tuple[str, ...]) -> float:
        predicted = [head_labels[i] for i in logits.argmax(1).tolist()]
        recalls = []
        for name in self.names:
            rows = np.flatnonzero(self.labels == name)
            recalls.append(float(np.mean([predicted[i] == name for i in rows])))
        return float(np.mean(recalls))


def selection_figures(
    model: EmotionNet, pub: _Split, real: RealCrops | None, flip_tta: bool
) -> dict[str, float]:
    """What selection weighs: PublicTest accuracy of both heads (FER2013 labels, FER+ majority) and, with
    real-face crops, each head's balanced recall on them."""
    lf, lp = predict_logits(model, pub.x, flip_tta)
    figures = {
        "public_fer_acc": float((lf.argmax(1) == pub.y).float().mean()),
        "public_ferplus_acc": float((lp[pub.m].argmax(1) == pub.fp[pub.m].argmax(1)).float().mean()),
    }
    if real is not None:
        rf, rp = predict_logits(model, real.x, flip_tta)
        figures["real_fer_recall"] = real.balanced_recall(rf, FER_LABELS)
        figures["real_ferplus_recall"] = real.balanced_recall(rp, FERPLUS_LABELS)
    return figures


def selection_score(record: dict[str, float], select: str | dict[str, float]) -> float:
    """`select`: "fer" (PublicTest FER2013 accuracy), "both" (its mean with FER+ accuracy), or weights over
    the evaluation record's figures, e.g. {"public_ferplus_acc": 0.5, "real_ferplus_recall": 0.5}."""
    if select == "fer":
        return record["public_fer_acc"]
    if isinstance(select, str):
        return 0.5 * (record["public_fer_acc"] + record["public_ferplus_acc"])
    return sum(weight * record[name] for name, weight in select.items())


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
        self.x = normalised(data.images[idx], mean, std, dev)
        self.mean, self.std = mean, std
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
    real: RealCrops | None = None,
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
    plan = {"total": steps_per_epoch * epochs}  # shortened to the time budget after the first epoch
    warm = int(tc.get("warmup_epochs", 2) * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, plan["total"] - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = Ema(model, float(tc.get("ema_decay", 0.999)))
    fwd = torch.compile(model) if tc.get("compile", False) and use_cuda else model
    ls = float(tc.get("label_smoothing", 0.1))
    w_fer = float(tc.get("fer_weight", 1.0))
    w_fp = float(tc.get("ferplus_weight", 1.0))
    mix_p, mix_a = float(tc.get("mixup_p", 0.0)), float(tc.get("mixup_alpha", 0.4))
    kd_w, kd_t = float(tc.get("kd_weight", 0.0)), float(tc.get("kd_temperature", 2.0))
    kd_clean = bool(tc.get("kd_clean", False))
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
    while ep < epochs:
        model.train()
        if tc.get("freeze_bn", False):
            # fine-tuning: keep the BatchNorm statistics the weights were trained with (batches of heavily
            # degraded crops would otherwise drag them away from what clean crops need)
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
        perm = torch.randperm(n, device=dev)
        tot_loss = torch.zeros((), device=dev)
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            xb, x_clean = augment_pair(tr.x[idx], aug, tr.mean, tr.std)
            t_fer = onehot[tr.y[idx]] * (1 - ls) + ls / 7
            t_fp, m_fp = tr.fp[idx], tr.m[idx].float()
            if mix_p > 0 and random.random() < mix_p:
                lam = float(np.random.beta(mix_a, mix_a))
                j = torch.randperm(bs, device=dev)
                xb = lam * xb + (1 - lam) * xb[j]
                x_clean = lam * x_clean + (1 - lam) * x_clean[j]
                t_fer = lam * t_fer + (1 - lam) * t_fer[j]
                t_fp = lam * t_fp + (1 - lam) * t_fp[j]
                m_fp = m_fp * m_fp[j]
            xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_cuda):
                lf, lp = fwd(xb)
                if teacher is not None:
                    with torch.no_grad():
                        # `kd_clean`: the teacher reads the crop without webcam degradation, so the student
                        # learns to read a degraded crop as the clean one is read
                        tf, tp = teacher(
                            x_clean.contiguous(memory_format=torch.channels_last) if kd_clean else xb
                        )
            hard = w_fer * soft_ce(lf, t_fer).mean() + w_fp * (soft_ce(lp, t_fp) * m_fp).sum() / (
                m_fp.sum().clamp(min=1)
            )
            if teacher is not None and kd_w > 0:
                # function matching: the teacher labels the same augmented (mixed) batch
                soft = (
                    w_fer * soft_ce(lf / kd_t, F.softmax(tf.float() / kd_t, 1)).mean()
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
        if ep == 0 and elapsed * epochs > max_s:
            # The budget will not hold every epoch (a slower or shared device): run as many as fit, with the
            # learning-rate schedule compressed to them, so the run still ends annealed (not cut mid-way).
            epochs = max(2, int(max_s / elapsed))
            plan["total"] = steps_per_epoch * epochs
            log.warning("%s: %d epochs fit the %.1f min budget; schedule shortened", tag, epochs, max_s / 60)
        last = ep == epochs - 1 or elapsed > max_s
        if (ep + 1) % eval_every == 0 or last:
            figures = selection_figures(ema.model, pub, real, flip_tta)
            score = selection_score(figures, tc.get("select", "fer"))
            rec = {
                "run": tag,
                "epoch": ep + 1,
                "loss": round(float(tot_loss) / steps_per_epoch, 4),
                **{name: round(value, 4) for name, value in figures.items()},
                "score": round(score, 4),
                "s": round(elapsed, 1),
            }
            history.append(rec)
            log.info(json.dumps(rec))
            if score > best["score"]:
                best = {
                    "score": score,
                    "epoch": ep + 1,
                    **figures,
                    "state": copy.deepcopy(ema.model.state_dict()),
                }
        ep += 1
        if elapsed > max_s:
            log.warning("%s: time budget reached after epoch %d", tag, ep)
            break
    ema.model.load_state_dict(best.pop("state"))
    ema.model.eval()
    return ema.model, {
        **best,
        "epochs_run": ep,
        "train_seconds": round(time.time() - t0, 1),
        "history": history,
    }


@dataclass
class Prepared:
    """Device tensors and settings every fit of one config shares."""

    dev: torch.device
    tr: _Split
    pub: _Split
    real: RealCrops | None
    mean: float
    std: float
    flip_tta: bool
    aug: dict[str, Any]


def prepare(cfg: dict[str, Any], data: FerData, device: str) -> Prepared:
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
    source = initial_weights(cfg)
    if source is not None:
        # fine-tuning keeps the input normalisation the weights were trained with
        mean, std = source_normalization(source)
    if cfg["train"].get("drop_not_face_train", True):
        # training-set cleaning only: rows FER+ annotators call unknown/not-a-face (mostly blank
        # images) carry arbitrary FER2013 labels; test splits are left untouched
        tr_idx = tr_idx[valid_fp[tr_idx]]
    tr = _Split(data, tr_idx, soft_fp, valid_fp, mean, std, dev)
    pub = _Split(data, data.split(PUBLIC), soft_fp, valid_fp, mean, std, dev)
    log.info("train rows %d, device %s", len(tr_idx), dev)
    real = None
    if cfg["train"].get("real_faces", False):
        crops, labels = real_selection_crops(data)
        real = RealCrops(crops, labels, mean, std, dev)
        log.info("real-face selection crops: %d (%s)", len(labels), ", ".join(real.names))
    return Prepared(dev, tr, pub, real, mean, std, bool(cfg["export"].get("flip_tta", False)), cfg["augment"])


def initial_weights(cfg: dict[str, Any]) -> Path | None:
    """The file a run starts from: `init.from_weights` (a .pt of `save_weights`) or `init.from_onnx`."""
    init = cfg.get("init", {})
    value = init.get("from_weights") or init.get("from_onnx")
    return _repo_path(value) if value else None


def source_normalization(source: Path) -> tuple[float, float]:
    if source.suffix == ".pt":
        normalization = torch.load(source, map_location="cpu", weights_only=True)["normalization"]
    else:
        normalization = json.loads(read_metadata(source)["normalization"])
    return float(normalization["mean"]), float(normalization["std"])


def load_weights(path: Path, dropout: float | None = None) -> tuple[EmotionNet, dict[str, Any]]:
    """A net saved by `pipeline.save_weights`, and the whole saved record."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model_cfg = dict(saved["model"])
    if dropout is not None:
        model_cfg["dropout"] = dropout
    net = build_model(model_cfg)
    net.load_state_dict(saved["state_dict"])
    return net, saved


def fit_teacher(cfg: dict[str, Any], prepared: Prepared) -> tuple[EmotionNet, dict[str, Any]]:
    """Train the config's teacher (`teacher.model`, `teacher.train` overriding `train`)."""
    p = prepared
    tcfg = cfg["teacher"]
    tmodel = build_model(tcfg["model"]).to(p.dev).to(memory_format=torch.channels_last)
    log.info("teacher params %.3fM", sum(q.numel() for q in tmodel.parameters()) / 1e6)
    return _fit(
        tmodel,
        {**cfg["train"], **tcfg.get("train", {}), "kd_weight": 0.0},
        p.aug,
        p.tr,
        p.pub,
        p.flip_tta,
        p.dev,
        tag="teacher",
        real=p.real,
    )


def _teacher(cfg: dict[str, Any], prepared: Prepared) -> tuple[EmotionNet | None, dict[str, Any] | None]:
    """None, the weights the run starts from (`teacher.from_start`: self-distillation while fine-tuning),
    the teacher trained in a run before (`teacher.from_weights`), or one trained now."""
    if "teacher" not in cfg:
        return None, None
    if cfg["teacher"].get("from_start"):
        net = copy.deepcopy(_initial_model(json.loads(json.dumps(cfg)), prepared)).eval()
        for parameter in net.parameters():
            parameter.requires_grad_(False)
        log.info("teacher: the starting weights, frozen")
        return net, None
    if cfg["teacher"].get("from_weights"):
        net, saved = load_weights(_repo_path(cfg["teacher"]["from_weights"]))
        log.info("teacher from %s", cfg["teacher"]["from_weights"])
        return net.to(prepared.dev).to(memory_format=torch.channels_last).eval(), saved.get("summary")
    return fit_teacher(cfg, prepared)


def _initial_model(cfg: dict[str, Any], prepared: Prepared) -> EmotionNet:
    """Random weights, or those of `init.from_weights` / `init.from_onnx` to fine-tune."""
    p = prepared
    source = initial_weights(cfg)
    dropout = cfg["model"].get("dropout", 0.3)
    if source is None:
        model = build_model(cfg["model"])
    elif source.suffix == ".pt":
        model, saved = load_weights(source, dropout)
        cfg["model"].update(saved["model"], dropout=dropout)
        log.info("fine-tuning %s", source)
    else:
        rng = np.random.default_rng(int(cfg["seed"]))
        rows = torch.from_numpy(rng.choice(len(p.tr.y), 2048, replace=False)).to(p.dev)
        model, architecture, _ = recover_net(source, p.tr.x[rows].float().cpu().numpy(), dropout=dropout)
        cfg["model"].update(architecture)
        log.info("fine-tuning %s (%s)", source, json.dumps(architecture))
    return model.to(p.dev).to(memory_format=torch.channels_last)


def train(cfg: dict[str, Any], data: FerData, device: str) -> tuple[EmotionNet, dict[str, Any]]:
    """Train per cfg (optionally a teacher first, then the distilled student; optionally starting from
    earlier weights). Returns the selected (EMA) student on CPU and a summary incl. calibration
    temperatures."""
    p = prepare(cfg, data, device)
    teacher, t_summary = _teacher(cfg, p)
    model = _initial_model(cfg, p)
    n_params = sum(q.numel() for q in model.parameters())
    log.info("model params %.3fM", n_params / 1e6)
    start = None
    if initial_weights(cfg) is not None:
        start = selection_figures(model, p.pub, p.real, p.flip_tta)
        log.info(json.dumps({"run": "start", **{k: round(v, 4) for k, v in start.items()}}))
    sel, best = _fit(
        model,
        cfg["train"],
        p.aug,
        p.tr,
        p.pub,
        p.flip_tta,
        p.dev,
        teacher=teacher,
        tag="student" if teacher is not None else "model",
        real=p.real,
    )
    lf, lp = predict_logits(sel, p.pub.x, p.flip_tta)
    onehot = torch.eye(7, device=p.dev)
    t_fer = fit_temperature(lf, onehot[p.pub.y])
    t_fp = fit_temperature(lp[p.pub.m], p.pub.fp[p.pub.m])
    summary = {
        **best,
        "temperature_fer": t_fer,
        "temperature_ferplus": t_fp,
        "params": n_params,
        "normalization": {"scale": 1 / 255, "mean": p.mean, "std": p.std},
    }
    if start is not None:
        summary["start"] = {**start, "score": selection_score(start, cfg["train"].get("select", "fer"))}
    if t_summary is not None:
        summary["teacher"] = {k: v for k, v in t_summary.items()}
    return sel.cpu().float(), summary


def _repo_path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else repo_root() / path


def load_config(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def run(cfg: dict[str, Any], data_path: str | None, device: str) -> tuple[EmotionNet, dict]:
    data = load_data(data_path)
    return train(cfg, data, device)
