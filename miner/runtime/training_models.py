"""Built-in architectures of the training runtime.

``build_model(architecture, config)`` rebuilds any of them from the ``config`` that the
trained weights carry in their safetensors metadata, so a client can load its result::

    from safetensors.torch import load_file, safe_open
    meta = safe_open("model.safetensors", "pt").metadata()
    model = build_model(meta["architecture"], json.loads(meta["config"]))
    model.load_state_dict(load_file("model.safetensors"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("mlp", "cnn", "transformer")
BYTE_VOCAB = 256  # the transformer LM reads UTF-8 bytes: no tokenizer to ship


class MLP(nn.Module):
    def __init__(self, inputs: int, outputs: int, hidden_size: int, layers: int) -> None:
        super().__init__()
        parts: list[nn.Module] = []
        width = inputs
        for _ in range(layers):
            parts += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        parts.append(nn.Linear(width, outputs))
        self.net = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.flatten(1))
        return out


class CNN(nn.Module):
    """Two 3x3 convolutions, global average pooling, a linear head: any image size fits."""

    def __init__(self, channels_in: int, outputs: int, channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels_in, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(2 * channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x).flatten(1))
        return out


class TinyLM(nn.Module):
    """A byte-level causal transformer language model."""

    def __init__(self, block_size: int, hidden_size: int, layers: int, heads: int) -> None:
        super().__init__()
        self.block_size = block_size
        self.tokens = nn.Embedding(BYTE_VOCAB, hidden_size)
        self.positions = nn.Embedding(block_size, hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size, heads, 4 * hidden_size, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, BYTE_VOCAB)
        mask = torch.triu(torch.full((block_size, block_size), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        h = self.tokens(ids) + self.positions(pos)
        mask: torch.Tensor = self.causal_mask[:n, :n]  # type: ignore[index]
        h = self.blocks(h, mask=mask, is_causal=True)
        out: torch.Tensor = self.head(self.norm(h))
        return out


def build_model(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model (the caller seeds torch for reproducible weights)."""
    if architecture == "mlp":
        return MLP(config["inputs"], config["outputs"], config["hidden_size"], config["layers"])
    if architecture == "cnn":
        return CNN(config["image_shape"][0], config["outputs"], config["channels"])
    if architecture == "transformer":
        return TinyLM(
            config["block_size"], config["hidden_size"], config["layers"], config["heads"]
        )
    raise ValueError(f"unknown architecture {architecture!r}")
