"""Architectures of the sample models (all trained on 8x8 digits).

Submodule names are deliberately explicit (``conv1``, ``blocks.0.attn.q_proj``,
``layer2.0.downsample.0`` ...): they are what users write in recipe files.
Every model's ``forward`` takes exactly one tensor and returns logits ``(B, 10)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DigitsCNN",
    "DigitsMLP",
    "DigitsTransformer",
    "DigitsLSTM",
    "DigitsResNet",
    "Attention",
    "MLP",
    "EncoderBlock",
    "BasicBlock",
]


class DigitsCNN(nn.Module):
    """Small 3-conv CNN. Input (B, 1, 8, 8)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool1(F.relu(self.bn2(self.conv2(x))))
        x = self.pool2(F.relu(self.bn3(self.conv3(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.head(x)


class DigitsMLP(nn.Module):
    """4-layer MLP. Input (B, 64)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 32)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.head(x)


class Attention(nn.Module):
    """Multi-head self-attention built from four plain ``nn.Linear`` projections."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q_proj(x).reshape(b, t, h, hd).transpose(1, 2)
        k = self.k_proj(x).reshape(b, t, h, hd).transpose(1, 2)
        v = self.v_proj(x).reshape(b, t, h, hd).transpose(1, 2)
        # Explicit softmax attention (exports cleanly at any opset).
        attn = torch.softmax(q @ k.transpose(-2, -1) * (hd**-0.5), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, d)
        return self.out_proj(out)


class MLP(nn.Module):
    """Transformer feed-forward: ``fc1`` -> GELU -> ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class DigitsTransformer(nn.Module):
    """Tiny transformer encoder over the 8 image rows as tokens. Input (B, 8, 8)."""

    def __init__(
        self,
        dim: int = 32,
        depth: int = 2,
        num_heads: int = 4,
        hidden: int = 64,
        num_tokens: int = 8,
        token_dim: int = 8,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(token_dim, dim)
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([EncoderBlock(dim, num_heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).mean(dim=1)
        return self.head(x)


class DigitsLSTM(nn.Module):
    """Single-layer LSTM over the 8 image rows; last time step -> ``head``. Input (B, 8, 8)."""

    def __init__(self, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class DigitsResNet(nn.Module):
    """CIFAR-style ResNet (3 stages x 2 basic blocks). Input (B, 1, 32, 32).

    ``stem`` (1->32) and ``layer1`` (32 ch) at 32x32, ``layer2`` (32 ch, stride 2,
    16x16), ``layer3`` (64 ch, stride 2, 8x8), global average pool, ``head``
    Linear(64, 10). 15 Conv layers (stem + 12 in blocks + 2 1x1 downsample
    shortcuts in ``layer2.0`` and ``layer3.0``), 6 residual adds, ~208 k
    parameters, ~56 M MACs per sample.

    The stem/``layer1`` width is 32 rather than the textbook 16 so that a batch
    of 32 takes well over 10 ms in fp32 ONNX Runtime on a 2-core CPU (with 16 it
    took ~7.5 ms), which keeps latency measurements above timing noise.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (32, 32, 64),
        blocks_per_stage: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(1, w1, 3, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=False),
        )
        self.layer1 = self._stage(w1, w1, blocks_per_stage, stride=1)
        self.layer2 = self._stage(w1, w2, blocks_per_stage, stride=2)
        self.layer3 = self._stage(w2, w3, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(w3, num_classes)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_ch, out_ch, stride)]
        layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(x)
