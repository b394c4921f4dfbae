"""The training loop shared by every model: run folder, resume, logging, DDP, EMA, checkpoints.

A run folder holds ``config.json`` (the full resolved configuration),
``metrics.csv``, ``checkpoints/last.pt`` (replaced atomically, so a kill -9 at
any moment leaves the previous one intact) and, at the end, ``final/`` with each
trained component as a regular checkpoint folder.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from reaudio.engine.bundle.dataclass_io import atomic_path, to_dict, write_json_atomic
from reaudio.models.checkpoint import save_checkpoint

from .lr_schedule import LR_DECAYS, learning_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings common to every model.

    Attributes:
        steps: optimiser steps in all (a resumed run continues to this many).
        batch_size: items per step per process.
        lr: peak learning rate (AdamW), reached after ``warmup_steps``.
        warmup_steps: linear warm-up from 0.
        lr_decay: "constant" (the peak until the end) or "cosine" (half a cosine from the peak
            after warm-up down to ``final_lr_fraction`` × peak at ``steps``), the usual way to end
            a run or a fine-tune: the last steps average out the gradient noise a constant rate
            keeps injecting.
        final_lr_fraction: where the cosine ends, as a fraction of ``lr``.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm (0: off).
        ema_decay: exponential moving average of the weights (0: off).
        seed: seeds initialisation, data order and noise.
        log_every, checkpoint_every: in steps.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        cfg_dropout: probability of dropping all conditions together (LDM; the unconditional
            half of classifier-free guidance).
        film_dropout, context_dropout: probabilities of dropping only the FiLM embedding, or
            only the retrieved contexts, independently (LDM), so "neighbours only" and
            "prompt, no neighbours" (k = 0) are conditions the model has seen.
        single_context_dropout: probability of dropping one retrieved context (captions or audio)
            while the others stay, each context on its own draw (LDM; 0: they go together).
        min_snr_gamma: min-SNR-γ loss weighting (Hang et al., 2023), weight min(SNR, γ)/SNR
            per sample for ε-prediction (LDM; 0: the plain ε objective).
        loudness_db: normalise training clips to this integrated loudness, LUFS (VAE, LDM,
            vocoder; None: levels as recorded).
        kl_weight: KL weight (VAE).
        discriminator_width: channel multiplier of the HiFi-GAN discriminators (vocoder).
        segment_seconds: train the VAE on random crops this long (0: whole training clips);
            it is convolutional, so shorter crops cost less per step and learn the same.
        time_limit_minutes: stop after this much training time in this process (0: no limit),
            with a checkpoint at the step where it stops and no ``final/``; the same command
            resumes there and, with the learning rate a function of the step, stays on the
            curve a run in one piece would have followed. For machines lent by the hour.
    """

    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 100
    lr_decay: str = "constant"
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = "auto"
    cfg_dropout: float = 0.1
    film_dropout: float = 0.0
    context_dropout: float = 0.0
    single_context_dropout: float = 0.0
    min_snr_gamma: float = 0.0
    loudness_db: float | None = None
    kl_weight: float = 1e-6
    discriminator_width: float = 1.0
    segment_seconds: float = 0.0
    time_limit_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay {self.lr_decay!r} is not one of {', '.join(LR_DECAYS)}")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction {self.final_lr_fraction} is outside 0…1")
        for name in ("cfg_dropout", "film_dropout", "context_dropout", "single_context_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name):g} is not a probability (0…1)")
        if self.time_limit_minutes < 0:
            raise ValueError(f"time limit {self.time_limit_minutes:g} minutes is negative (--time-limit 0: no limit)")


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def training_device(device: str) -> torch.device:
    """``--device`` as a torch device: "auto" takes CUDA when there is one; each rank its own GPU."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if want_cuda else "cpu")


class Trainer:
    """Runs ``task`` for ``cfg.steps`` steps in ``run_dir``, resuming from its last checkpoint."""

    def __init__(self, task, run_dir: str | Path, cfg: TrainConfig, resolved: dict) -> None:
        self.task = task
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank, self.world = distributed()
        self.device = training_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.resolved = {"train": to_dict(cfg), **resolved, "world_size": self.world}
        task.setup(self)
        self.modules: dict[str, nn.Module] = task.trainable()
        for m in self.modules.values():
            m.to(self.device).train()
        self.ddp = {name: self._wrap(m) for name, m in self.modules.items()}
        self.optimizers = {
            name: torch.optim.AdamW(m.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
            for name, m in self.modules.items()
        }
        self.ema = {
            name: copy.deepcopy(m).eval().requires_grad_(False) for name, m in self.modules.items() if cfg.ema_decay > 0
        }
        self.step = 0
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", self.resolved)
        self._resume()

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def _resume(self) -> None:
        path = self.checkpoint_path
        if not path.is_file():
            return
        # weights_only: a checkpoint is data; a crafted pickle must not run code on resume.
        state = torch.load(path, map_location=self.device, weights_only=True)
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
            self.optimizers[name].load_state_dict(state["optimizers"][name])
        for name, module in self.ema.items():
            module.load_state_dict(state["ema"][name])
        self.step = state["step"]
        if self.rank == 0:
            log.info("resumed %s at step %d", self.run_dir, self.step)

    def save(self) -> None:
        """Write ``checkpoints/last.pt`` atomically (rank 0 only)."""
        if self.rank != 0:
            return
        state = {
            "step": self.step,
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "ema": {n: m.state_dict() for n, m in self.ema.items()},
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def lr_at(self, step: int) -> float:
        c = self.cfg
        return learning_rate(step, c.steps, c.lr, c.warmup_steps, c.lr_decay, c.final_lr_fraction)

    def optimise(self, name: str, loss: torch.Tensor) -> float:
        """Backward, clip and step the optimiser of module ``name``; returns the gradient norm."""
        opt = self.optimizers[name]
        for group in opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.modules[name].parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) if self.cfg.grad_clip > 0 else torch.zeros(())
        opt.step()
        if name in self.ema:
            # Warm-up (1 + n)/(10 + n): a plain 0.999 average still holds 22 % of the random
            # initial weights after 1 500 steps, which shrank the LDM's noise predictions by
            # 15 % and blew sampled latents up to 15× the data's spread.
            decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for e, p in zip(self.ema[name].parameters(), self.modules[name].parameters()):
                    e.lerp_(p, 1.0 - decay)
        return float(norm)

    def run(self) -> dict:
        """Train to ``cfg.steps``; returns the final summary (also written to ``summary.json``).

        Cut short by ``cfg.time_limit_minutes``: returns ``{"steps": …, "stopped": "time limit", …}``
        after saving a checkpoint, and writes neither ``final/`` nor ``summary.json``."""
        from tqdm import tqdm

        metrics_path = self.run_dir / "metrics.csv"
        if self.rank == 0:
            trim_metrics(metrics_path, self.step)
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            disable=self.rank != 0 or not self.task.progress,
            unit="step",
            dynamic_ncols=True,
        )
        start, start_step, last = time.perf_counter(), self.step, {}
        while self.step < self.cfg.steps:
            # All randomness of a step derives from (seed, step, rank): a resumed run
            # continues exactly as an uninterrupted one would have.
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.step) * 64 + self.rank)
            last = self.task.train_step(self, self.step)
            self.step += 1
            elapsed = time.perf_counter() - start
            items_s = (self.step - start_step) * self.cfg.batch_size * self.world / max(elapsed, 1e-9)
            bar.update(1)
            bar.set_postfix(
                **{k: f"{v:.4f}" for k, v in last.items() if k.startswith("loss")}, items_s=f"{items_s:.1f}"
            )
            if self.rank == 0 and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps):
                self._log(
                    metrics_path, {"step": self.step, "lr": self.lr_at(self.step - 1), "items_s": items_s, **last}
                )
            stopping = self.step < self.cfg.steps and self._out_of_time(elapsed)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps or stopping:
                self.save()
            if stopping:
                bar.close()
                if self.rank == 0:
                    log.warning(
                        "stopped by the time limit (%g min) at step %d of %d; the same command continues from there",
                        self.cfg.time_limit_minutes,
                        self.step,
                        self.cfg.steps,
                    )
                self._leave_process_group()
                return {"steps": self.step, "of": self.cfg.steps, "stopped": "time limit", "last": last}
        bar.close()
        summary = {"steps": self.step, "last": last, **self.task.evaluate(self)}
        if self.world > 1:
            summary["ranks_identical"] = self._ranks_identical()
        if self.rank == 0:
            for name, module in self.final_modules().items():
                save_checkpoint(self.run_dir / "final" / name, module)
            self.task.finalize(self, self.run_dir / "final")
            write_json_atomic(self.run_dir / "summary.json", summary)
        self._leave_process_group()
        return summary

    @staticmethod
    def _leave_process_group() -> None:
        if dist.is_initialized():
            dist.barrier()
            # Tear gloo/NCCL down before interpreter exit; left alive, its threads
            # can abort the process at shutdown (seen as SIGABRT on a rank).
            dist.destroy_process_group()

    def _out_of_time(self, elapsed_s: float) -> bool:
        if self.cfg.time_limit_minutes <= 0:
            return False
        over = elapsed_s >= 60 * self.cfg.time_limit_minutes
        if self.world == 1:
            return over
        # Ranks' clocks differ; they stop together at the step any of them runs out.
        flag = torch.tensor(float(over), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _ranks_identical(self) -> bool:
        """True when every rank holds bit-identical weights (what DDP promises)."""
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for m in self.modules.values() for p in m.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat.to(self.device) if self.device.type == "cuda" else flat)
        return all(torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered)

    def final_modules(self) -> dict[str, nn.Module]:
        """What the run delivers: EMA weights where kept, else the trained weights."""
        return {n: (self.ema.get(n) or m).cpu() for n, m in self.modules.items() if n in self.task.deliverables}

    @staticmethod
    def _log(path: Path, row: dict) -> None:
        new = not path.is_file()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def trim_metrics(path: Path, step: int) -> int:
    """Drop rows logged after ``step`` (a run killed between checkpoints logged them; the
    resumed run logs those steps again). Returns how many were dropped."""
    if not path.is_file():
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
    if len(kept) < len(rows):
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
    return len(rows) - len(kept)
