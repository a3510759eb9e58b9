"""A small plain VGG-style CNN with two heads (torch).

Plain 3x3 conv + BN + ReLU stacks were chosen over residual/depthwise designs because they are the
fastest per FLOP in onnxruntime on one CPU core (BN is folded into the conv at export), which is
the binding budget (>= 1000 crops/s at batch 32 on one core).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    def fused(self) -> nn.Sequential:
        """Conv with BN folded in (eval statistics) + ReLU, for export."""
        conv, bn = self[0], self[1]
        w = conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1)
        b = bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)
        f = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1, bias=True)
        f.weight.data.copy_(w.detach())
        f.bias.data.copy_(b.detach())
        return nn.Sequential(f, nn.ReLU(inplace=True))


class EmotionNet(nn.Module):
    """Stages of `depths[i]` convs with `widths[i]` channels, 2x2 max-pool between stages.

    Heads on global-average-pooled features: FER2013 (7 classes) and FER+ (8 classes, trained on
    vote distributions). `stem_stride=2` halves the resolution in the first conv (cheaper).
    """

    def __init__(
        self,
        widths: list[int],
        depths: list[int],
        dropout: float = 0.3,
        stem_stride: int = 1,
        n_fer: int = 7,
        n_ferplus: int = 8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for si, (w, d) in enumerate(zip(widths, depths, strict=True)):
            if si > 0:
                layers.append(nn.MaxPool2d(2))
            for li in range(d):
                layers.append(ConvBNReLU(cin, w, stem_stride if (si == 0 and li == 0) else 1))
                cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fer_head = nn.Linear(cin, n_fer)
        self.ferplus_head = nn.Linear(cin, n_ferplus)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.drop(self.embed(x))
        return self.fer_head(h), self.ferplus_head(h)


def build_model(cfg: dict[str, Any]) -> EmotionNet:
    return EmotionNet(cfg["widths"], cfg["depths"], cfg.get("dropout", 0.3), cfg.get("stem_stride", 1))


class ExportWrapper(nn.Module):
    """Inference graph: BN fused, optional horizontal-flip averaging, temperature, softmax."""

    def __init__(self, net: EmotionNet, flip_tta: bool, t_fer: float, t_ferplus: float) -> None:
        super().__init__()
        feats = [m.fused() if isinstance(m, ConvBNReLU) else m for m in net.features]
        self.features = nn.Sequential(*feats)
        self.fer_head, self.ferplus_head = net.fer_head, net.ferplus_head
        self.flip_tta = flip_tta
        self.t_fer, self.t_ferplus = float(t_fer), float(t_ferplus)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).mean(dim=(2, 3))
        if self.flip_tta:
            # a pooled feature of the mirrored face; logits are linear in h, so averaging h
            # equals averaging the two logit vectors
            h = 0.5 * (h + self.features(torch.flip(x, dims=[3])).mean(dim=(2, 3)))
        fer = torch.softmax(self.fer_head(h) / self.t_fer, dim=1)
        ferplus = torch.softmax(self.ferplus_head(h) / self.t_ferplus, dim=1)
        return fer, ferplus
