"""The spectrum classifier network and its training loop (the only module here importing torch).

A small 1-D CNN over the feature vector: four conv blocks (pooling by bins/1024, 2, 4, 4), two
dense layers; the exported graph ends in a softmax (model.json ``output.kind: probabilities``).
Training is deterministic for a seed on the CPU (torch deterministic algorithms, a fixed thread
count, a seeded shuffle); on a GPU (used when one is visible, unless ``device="cpu"``) cuDNN's
deterministic mode is asked for too.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from inference.training import TrainingError


@dataclass(frozen=True)
class FitConfig:
    """Training settings. ``lr``: peak learning rate of the one-cycle schedule; ``threads``: torch
    CPU threads; ``device``: ``auto`` (a GPU if torch sees one), ``cpu`` or ``cuda``."""

    epochs: int | None = None     # None: enough for min_steps, at least 3
    batch: int | None = None      # None: 128, smaller for small data sets (n / 16, at least 16)
    min_steps: int = 600
    lr: float = 3e-3
    seed: int = 1
    threads: int = 1              # on a shared 2-core machine more threads contend and run slower
    device: str = "auto"
    balance: bool = True          # weight the loss by inverse class frequency
    progress: bool = True


def require_torch():
    """Import torch or raise TrainingError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise TrainingError("training needs PyTorch: pip install 'ionstream[train]' (the CPU build)") from None
    return torch


def check_bins(bins: int) -> None:
    """The network pools by bins/1024, then 2, 4 and 4: TrainingError for other bin counts."""
    if bins % 1024 or bins < 2048:
        raise TrainingError(f"--bins must be a multiple of 1024, at least 2048, got {bins}")


def build_net(bins: int, n_classes: int):
    """(network returning logits, wrapper class adding the softmax) for ``bins`` features."""
    torch = require_torch()
    from torch import nn

    check_bins(bins)

    class SpectrumNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(bins // 1024),
                nn.Conv1d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(4),
                nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool1d(4),
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 32, 48), nn.ReLU(),
                                      nn.Linear(48, n_classes))

        def forward(self, x):                      # x: (batch, bins) -> logits (batch, classes)
            return self.head(self.body(x.unsqueeze(1)))

    class WithSoftmax(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.softmax(self.net(x), dim=-1)

    return SpectrumNet(), WithSoftmax


def schedule(n: int, cfg: FitConfig) -> tuple[int, int]:
    """(epochs, batch) for ``n`` training spectra: given values, or enough passes for
    ``cfg.min_steps`` optimiser steps (small data sets get smaller batches and more epochs)."""
    batch = cfg.batch or min(128, max(16, n // 16))
    if cfg.epochs is not None:
        return cfg.epochs, batch
    per_epoch = max(1, -(-n // batch))
    return max(3, -(-cfg.min_steps // per_epoch)), batch


def _device(torch, name: str):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: torch sees no GPU (this torch build or machine has none)")
    return torch.device(name)


def fit(X: np.ndarray, y: np.ndarray, Xv: np.ndarray, yv: np.ndarray, n_classes: int, cfg: FitConfig):
    """Train on (X, y), scoring (Xv, yv) after each epoch (skipped when empty).

    Returns ``(model, history, device)``: the softmax-wrapped network on the CPU in eval mode,
    one dict per epoch (loss, train_top1, val_top1 or None), and the device name it ran on.
    """
    torch = require_torch()
    from torch import nn
    from tqdm import tqdm

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.set_num_threads(max(1, cfg.threads))
    dev = _device(torch, cfg.device)
    # On a GPU some kernels (pooling backward) have no deterministic version: warn, don't fail.
    torch.use_deterministic_algorithms(True, warn_only=dev.type == "cuda")
    torch.manual_seed(cfg.seed)
    net, wrap = build_net(X.shape[1], n_classes)
    net.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    epochs, batch = schedule(len(X), cfg)
    steps = epochs * ((len(X) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    weight = None
    if cfg.balance:
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
        weight = torch.tensor(w, dtype=torch.float32, device=dev)
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.02)
    Xt, yt = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(y))
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    bar = tqdm(total=steps, desc="training", unit="batch", disable=not cfg.progress, file=sys.stderr)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(X), generator=gen)
        total, correct = 0.0, 0
        for i in range(0, len(X), batch):
            idx = perm[i:i + batch]
            xb, yb = Xt[idx].to(dev), yt[idx].to(dev)
            opt.zero_grad(set_to_none=True)
            logits = net(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            bar.update(1)
        val = accuracy(net, Xv, yv, dev) if len(Xv) else None
        history.append({"epoch": epoch + 1, "loss": total / len(X), "train_top1": correct / len(X), "val_top1": val})
        bar.set_postfix(loss=f"{total / len(X):.4f}", val="-" if val is None else f"{val:.4f}")
    bar.close()
    net.to("cpu").eval()
    return wrap(net).eval(), history, str(dev)


def accuracy(net, X: np.ndarray, y: np.ndarray, dev=None, batch: int = 1024) -> float:
    """Top-1 of ``net`` (logits or probabilities) on (X, y)."""
    import torch

    was_training = net.training
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            xb = torch.from_numpy(X[i:i + batch])
            if dev is not None:
                xb = xb.to(dev)
            correct += int((net(xb).argmax(1).cpu().numpy() == y[i:i + batch]).sum())
    net.train(was_training)
    return correct / len(X)
