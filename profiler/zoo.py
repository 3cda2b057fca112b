"""Model zoo: real architectures on real data that needs no download.

Every model is built by a function ``build_<name>(*, width, depth, batch_size, seed, device, ...)``
that returns a :class:`Workload`: the model, a deterministic batch for each step (the same batches
for every optimizer configuration of a seed), the training loss and a held-out evaluation loss.
``width`` multiplies hidden sizes and ``depth`` multiplies the number of layers, so one suite runs
small on a CPU and large on a GPU.

Data sources (no download, deterministic for a given Python / matplotlib version):

- text: the Python standard library's own ``*.py`` files (sorted, concatenated, byte level);
  the last 10 % is held out for evaluation;
- glyphs: the 62 characters ``0-9A-Za-z`` rendered from the TrueType fonts that matplotlib ships
  (DejaVu, STIX, Computer Modern), randomly shifted and scaled; three fonts are held out;
- module/identifier pairs: which stdlib modules use which identifiers (implicit feedback for the
  recommender), 10 % of the pairs held out.
"""

from __future__ import annotations

import functools
import glob
import inspect
import os
import re
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnb8.nn import StableEmbedding


@dataclass
class Workload:
    """What the runner needs to train and evaluate one model."""

    model: nn.Module
    train_batch: Callable[[int], tuple]  # step -> batch on the device
    loss: Callable[[tuple], torch.Tensor]  # batch -> scalar loss
    eval_batches: list  # held-out batches on the device
    notes: str = ""

    @torch.no_grad()
    def eval_loss(self) -> float:
        was_training = self.model.training
        self.model.eval()
        total = sum(float(self.loss(b)) for b in self.eval_batches) / len(self.eval_batches)
        self.model.train(was_training)
        return total


def _rng(seed: int, step: int) -> torch.Generator:
    """A generator for one (seed, step): batches do not depend on what ran before."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _hidden(base: int, width: float, multiple: int = 16) -> int:
    return max(multiple, int(round(base * width / multiple)) * multiple)


# --------------------------------------------------------------------------------------------- data


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


@functools.lru_cache(maxsize=1)
def stdlib_text() -> torch.Tensor:
    """Bytes of the standard library's top-level ``*.py`` files, sorted by name, as uint8."""
    paths = sorted(glob.glob(os.path.join(_stdlib_dir(), "*.py")))
    if not paths:
        raise RuntimeError(f"no Python source files found in {_stdlib_dir()}")
    data = b"\n".join(Path(p).read_bytes() for p in paths)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _text_split(corpus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(len(corpus) * 0.9)
    return corpus[:cut], corpus[cut:]


def _text_windows(text: torch.Tensor, n: int, length: int, g: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(text) - length - 1, (n,), generator=g)
    return torch.stack([text[s : s + length + 1] for s in starts.tolist()]).long()


GLYPH_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
GLYPH_FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
]  # fmt: skip
GLYPH_HELD_OUT = {"DejaVuSansMono-Oblique.ttf", "STIXGeneralBolIta.ttf", "cmss10.ttf"}
GLYPH_CANVAS = 28


@functools.lru_cache(maxsize=1)
def glyph_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, held_out)``: every char of every font, centred on a 28x28 canvas in [0, 1]."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    images, labels, held_out = [], [], []
    for font_name in GLYPH_FONTS:
        font = FT2Font(os.path.join(font_dir, font_name))
        for label, char in enumerate(GLYPH_CHARS):
            font.set_size(20, 72)
            font.set_text(char, 0.0)
            font.draw_glyphs_to_bitmap(antialiased=True)
            glyph = np.asarray(font.get_image())[:GLYPH_CANVAS, :GLYPH_CANVAS]
            canvas = np.zeros((GLYPH_CANVAS, GLYPH_CANVAS), dtype=np.float32)
            top, left = (GLYPH_CANVAS - glyph.shape[0]) // 2, (GLYPH_CANVAS - glyph.shape[1]) // 2
            canvas[top : top + glyph.shape[0], left : left + glyph.shape[1]] = glyph / 255.0
            images.append(canvas)
            labels.append(label)
            held_out.append(font_name in GLYPH_HELD_OUT)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), torch.tensor(held_out)


def _glyph_batch(
    images: torch.Tensor, labels: torch.Tensor, n: int, size: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random glyphs, randomly scaled (0.8-1.15) and shifted (±3 px), resized to ``size``."""
    idx = torch.randint(0, len(images), (n,), generator=g)
    scale = 0.8 + 0.35 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) - 0.5) * (6 / GLYPH_CANVAS) * 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    x = F.grid_sample(images[idx].unsqueeze(1), grid, align_corners=False)
    return x, labels[idx]


IDENTIFIER = re.compile(rb"\b[A-Za-z_][A-Za-z0-9_]{2,}\b")


@functools.lru_cache(maxsize=4)
def module_identifiers(max_modules: int, max_items: int) -> tuple[torch.Tensor, int, int]:
    """Implicit feedback: ``(pairs[n, 2], n_users, n_items)``, user = stdlib module, item = identifier.

    Modules are the first ``max_modules`` non-test stdlib files in sorted order; items are the
    ``max_items`` identifiers used by the most modules; a pair means "module uses identifier".
    """
    root = _stdlib_dir()
    paths = [
        p
        for p in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
        if "site-packages" not in p and os.sep + "test" not in p[len(root) :]
    ][:max_modules]
    used = [set(IDENTIFIER.findall(Path(p).read_bytes())) for p in paths]
    counts: dict[bytes, int] = {}
    for names in used:
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    vocab = sorted(counts, key=lambda k: (-counts[k], k))[:max_items]
    item_id = {name: i for i, name in enumerate(vocab)}
    pairs = [(u, item_id[name]) for u, names in enumerate(used) for name in sorted(names) if name in item_id]
    return torch.tensor(pairs), len(paths), len(vocab)


# ------------------------------------------------------------------------------------------- models


def _embedding(num: int, dim: int, stable: bool) -> nn.Module:
    return StableEmbedding(num, dim) if stable else nn.Embedding(num, dim)


class ByteTransformer(nn.Module):
    """Pre-norm transformer over bytes: causal (GPT-style) or bidirectional (BERT-style)."""

    def __init__(
        self, vocab: int, dim: int, layers: int, heads: int, seq_len: int, causal: bool, stable: bool
    ):
        super().__init__()
        self.causal = causal
        self.tokens = _embedding(vocab, dim, stable)
        self.positions = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x) + self.positions[: x.shape[1]]
        mask = (
            nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
            if self.causal
            else None
        )
        h = self.blocks(h, mask=mask, is_causal=self.causal)
        return self.head(self.norm(h))


def _transformer_heads(dim: int) -> int:
    return max(1, dim // 32)


def _next_byte_workload(model: nn.Module, batch_size: int, seq_len: int, seed: int, device: str) -> Workload:
    """Next-byte prediction on stdlib source text (the GPT and LSTM language models): training windows
    drawn per step from the seed, four fixed held-out windows."""
    train, held = _text_split(stdlib_text())

    def batch(step: int) -> tuple:
        w = _text_windows(train, batch_size, seq_len, _rng(seed, step)).to(device)
        return w[:, :-1], w[:, 1:]

    def loss(b: tuple) -> torch.Tensor:
        return F.cross_entropy(model(b[0]).flatten(0, 1), b[1].flatten())

    evals = []
    for i in range(4):
        w = _text_windows(held, batch_size, seq_len, _rng(12345, i)).to(device)
        evals.append((w[:, :-1], w[:, 1:]))
    return Workload(model, batch, loss, evals)


def build_gpt(
    *, width: float, depth: int, batch_size: int, seed: int, device: str, seq_len: int = 64
) -> Workload:
    """Decoder-only byte-level transformer (GPT-style, bnb8.nn.StableEmbedding) on stdlib source text."""
    dim, layers = _hidden(64, width), 2 * depth
    model = ByteTransformer(256, dim, layers, _transformer_heads(dim), seq_len, causal=True, stable=True).to(
        device
    )
    return _next_byte_workload(model, batch_size, seq_len, seed, device)


MASK_ID = 256


def _mask_bytes(w: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of 15 % of positions; targets are -100 (ignored) where not masked."""
    chosen = torch.rand(w.shape, generator=g) < 0.15
    chosen[:, 0] |= ~chosen.any(dim=1)  # at least one target per row
    inputs = w.masked_fill(chosen, MASK_ID)
    targets = w.masked_fill(~chosen, -100)
    return inputs, targets


def build_bert(
    *, width: float, depth: int, batch_size: int, seed: int, device: str, seq_len: int = 64
) -> Workload:
    """Encoder byte-level transformer (BERT-style masked language model) on stdlib source text."""
    dim, layers = _hidden(64, width), 2 * depth
    model = ByteTransformer(
        257, dim, layers, _transformer_heads(dim), seq_len, causal=False, stable=False
    ).to(device)
    train, held = _text_split(stdlib_text())

    def batch(step: int) -> tuple:
        g = _rng(seed, step)
        inputs, targets = _mask_bytes(_text_windows(train, batch_size, seq_len - 1, g), g)
        return inputs.to(device), targets.to(device)

    def loss(b: tuple) -> torch.Tensor:
        return F.cross_entropy(model(b[0]).flatten(0, 1), b[1].flatten(), ignore_index=-100)

    evals = []
    for i in range(4):
        g = _rng(12345, i)
        inputs, targets = _mask_bytes(_text_windows(held, batch_size, seq_len - 1, g), g)
        evals.append((inputs.to(device), targets.to(device)))
    return Workload(model, batch, loss, evals)


class ByteLSTM(nn.Module):
    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.tokens = nn.Embedding(256, dim)
        self.lstm = nn.LSTM(dim, dim, layers, batch_first=True)
        self.head = nn.Linear(dim, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.tokens(x))[0])


def build_lstm(
    *, width: float, depth: int, batch_size: int, seed: int, device: str, seq_len: int = 64
) -> Workload:
    """Byte-level LSTM language model on stdlib source text."""
    model = ByteLSTM(_hidden(128, width), 1 + depth).to(device)
    return _next_byte_workload(model, batch_size, seq_len, seed, device)


def _glyph_workload(model: nn.Module, batch_size: int, seed: int, device: str, size: int) -> Workload:
    images, labels, held_out = glyph_images()
    train_x, train_y = images[~held_out], labels[~held_out]
    test_x, test_y = images[held_out], labels[held_out]

    def batch(step: int) -> tuple:
        x, y = _glyph_batch(train_x, train_y, batch_size, size, _rng(seed, step))
        return x.to(device), y.to(device)

    def loss(b: tuple) -> torch.Tensor:
        return F.cross_entropy(model(b[0]), b[1])

    evals = []
    for i in range(4):
        x, y = _glyph_batch(test_x, test_y, batch_size, size, _rng(12345, i))
        evals.append((x.to(device), y.to(device)))
    return Workload(model, batch, loss, evals)


def build_mlp(*, width: float, depth: int, batch_size: int, seed: int, device: str) -> Workload:
    """MLP classifying the 62 glyphs 0-9A-Za-z rendered from matplotlib's fonts (28x28)."""
    hidden = _hidden(256, width)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(GLYPH_CANVAS**2, hidden), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, len(GLYPH_CHARS)))
    return _glyph_workload(nn.Sequential(*layers).to(device), batch_size, seed, device, GLYPH_CANVAS)


def build_cnn(
    *, width: float, depth: int, batch_size: int, seed: int, device: str, image_size: int = 32
) -> Workload:
    """Small CNN on the glyphs, upscaled to ``image_size``: few parameters, activation memory dominates."""
    channels = _hidden(32, width, multiple=8)
    layers: list[nn.Module] = []
    c_in = 1
    for stage in range(2 + depth):
        c_out = channels * 2**stage
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, len(GLYPH_CHARS))]
    return _glyph_workload(nn.Sequential(*layers).to(device), batch_size, seed, device, image_size)


class Recommender(nn.Module):
    """Neural collaborative filtering: a dot product of embeddings plus an MLP over their concatenation."""

    def __init__(self, n_users: int, n_items: int, dim: int, depth: int):
        super().__init__()
        self.users = nn.Embedding(n_users, dim)
        self.items = nn.Embedding(n_items, dim)
        layers: list[nn.Module] = [nn.Linear(2 * dim, dim), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(dim, dim), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(dim, 1))
        nn.init.normal_(self.users.weight, std=dim**-0.5)
        nn.init.normal_(self.items.weight, std=dim**-0.5)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        u, i = self.users(users), self.items(items)
        return (u * i).sum(-1) + self.mlp(torch.cat([u, i], -1)).squeeze(-1)


def build_recsys(
    *,
    width: float,
    depth: int,
    batch_size: int,
    seed: int,
    device: str,
    max_modules: int = 600,
    max_items: int = 20000,
) -> Workload:
    """Embedding-heavy recommender: which stdlib modules use which identifiers (one negative per positive)."""
    pairs, n_users, n_items = module_identifiers(max_modules, int(max_items * width))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))
    cut = int(len(pairs) * 0.9)
    train, held = pairs[order[:cut]], pairs[order[cut:]]
    known = set((pairs[:, 0] * n_items + pairs[:, 1]).tolist())
    model = Recommender(n_users, n_items, _hidden(64, width), depth).to(device)

    def sample(source: torch.Tensor, g: torch.Generator) -> tuple:
        pos = source[torch.randint(0, len(source), (batch_size // 2,), generator=g)]
        neg_items = torch.randint(0, n_items, (len(pos),), generator=g)
        users = torch.cat([pos[:, 0], pos[:, 0]])
        items = torch.cat([pos[:, 1], neg_items])
        neg_labels = torch.tensor(
            [float(u * n_items + i in known) for u, i in zip(pos[:, 0].tolist(), neg_items.tolist())]
        )
        labels = torch.cat([torch.ones(len(pos)), neg_labels])
        return users.to(device), items.to(device), labels.to(device)

    def loss(b: tuple) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(b[0], b[1]), b[2])

    evals = [sample(held, _rng(12345, i)) for i in range(4)]
    return Workload(model, lambda step: sample(train, _rng(seed, step)), loss, evals)


MODELS: dict[str, Callable[..., Workload]] = {
    "gpt": build_gpt,
    "bert": build_bert,
    "lstm": build_lstm,
    "mlp": build_mlp,
    "cnn": build_cnn,
    "recsys": build_recsys,
}

COMMON_ARGS = ("width", "depth", "batch_size", "seed", "device")


def model_options(name: str) -> dict[str, object]:
    """Model-specific keyword arguments (beyond width/depth/batch_size) and their defaults."""
    params = inspect.signature(MODELS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in COMMON_ARGS}


def describe(name: str) -> str:
    return (MODELS[name].__doc__ or "").strip().splitlines()[0]


def build(name: str, **kwargs) -> Workload:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
