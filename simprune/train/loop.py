"""The training loop: data → device augmentation → framework step → optimiser → EMA teacher.

Host syncs happen only every ``log_every`` steps (logging, the non-finite-loss check) and at
checkpoints. Progress ``t`` for every schedule is per iteration: ``step / total_steps``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune.atomic import atomic_write_text
from simprune.data import load_dataset, resolve_data_root
from simprune.data.augment import MultiCropAugment, MultiCropConfig, TwoCropAugment, TwoCropConfig
from simprune.data.stats import dataset_stats
from simprune.eval.features import random_subset
from simprune.frameworks import DINO, FRAMEWORKS, MoCoV3, PruneSettings
from simprune.models import create_model
from simprune.models.init import check_init_options
from simprune.train import dist
from simprune.train.checkpoint import CKPT_NAME, atomic_save, load_checkpoint, rng_state, set_rng_state
from simprune.train.config import TrainConfig, incompatible
from simprune.train.evaluate import evaluate
from simprune.train.log import MetricsLog, Progress
from simprune.train.optim import cosine, lr_at, param_groups, set_hparams
from simprune.train.sampler import ResumableSampler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """A run that cannot start or go on (bad config, incompatible checkpoint, non-finite loss)."""


def build_framework(cfg: TrainConfig) -> nn.Module:
    """The SSL framework (student, teacher, heads) a config describes."""
    if cfg.framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {cfg.framework!r}; known: {', '.join(FRAMEWORKS)}")
    backbone = create_model(cfg.model, reduce_at=tuple(cfg.reduce_at), drop_path_rate=cfg.drop_path,
                            img_size=cfg.global_size, init=cfg.init, pos_embed=cfg.pos_embed,
                            freeze_patch_embed=cfg.freeze_patch_embed)
    prune = PruneSettings(cfg.method, cfg.keep_rate, cfg.window, tuple(cfg.keep_warmup),
                          dict(cfg.reducer_options))
    if cfg.framework == "dino":
        return DINO(backbone, prune, cfg.out_dim, cfg.head_hidden, cfg.bottleneck, cfg.student_temp,
                    cfg.teacher_temp, cfg.warmup_teacher_temp, cfg.warmup_teacher_frac,
                    cfg.center_momentum)
    return MoCoV3(backbone, prune, cfg.moco_dim, cfg.moco_hidden, cfg.moco_temperature)


def build_augment(cfg: TrainConfig) -> nn.Module:
    mean, std = dataset_stats(cfg.dataset)
    if cfg.framework == "dino":
        return MultiCropAugment(MultiCropConfig(
            global_size=cfg.global_size, local_size=cfg.local_size, n_local=cfg.local_views,
            global_scale=tuple(cfg.global_scale), local_scale=tuple(cfg.local_scale),
            mean=mean, std=std, color_ops=cfg.color_ops,
            **({} if cfg.blur else {"blur_p_global": (0.0, 0.0), "blur_p_local": 0.0}),
            **({} if cfg.solarize else {"solarize_p_global": (0.0, 0.0)})))
    if cfg.local_views:
        raise ValueError(f"local_views={cfg.local_views}: MoCo v3 uses two crops; set local_views=0")
    return TwoCropAugment(TwoCropConfig(
        size=cfg.global_size, scale=tuple(cfg.global_scale), mean=mean, std=std,
        color_ops=cfg.color_ops, **({} if cfg.blur else {"blur_p": (0.0, 0.0)}),
        **({} if cfg.solarize else {"solarize_p": (0.0, 0.0)})))


def check_config(cfg: TrainConfig) -> None:
    """Fail fast, before any file is written, on values that cannot work."""
    from simprune.reducers import REDUCERS
    from simprune.reducers.schedule import WINDOWS
    from simprune.tokens import check_keep_rate

    check_keep_rate(cfg.keep_rate, "keep_rate")
    if cfg.method != "dense":
        REDUCERS.get(cfg.method)
    WINDOWS.get(cfg.window)
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision {cfg.precision!r}; valid: {', '.join(PRECISIONS)}")
    if cfg.framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {cfg.framework!r}; known: {', '.join(FRAMEWORKS)}")
    check_init_options(cfg.init, cfg.pos_embed)
    if not 0.0 <= cfg.momentum <= 1.0 or not 0.0 <= cfg.momentum_end <= 1.0:
        raise ValueError(f"momentum and momentum_end (teacher EMA) must be in [0, 1], got "
                         f"{cfg.momentum} and {cfg.momentum_end}")
    if cfg.epochs < 0 or cfg.batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {cfg.epochs}, {cfg.batch_size}")


class Trainer:
    """One run in ``cfg.out``: resumes automatically from ``cfg.out/checkpoint.pt``."""

    def __init__(self, cfg: TrainConfig) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.ckpt_path = self.run_dir / CKPT_NAME
        saved = None
        if self.ckpt_path.exists():
            saved = load_checkpoint(self.ckpt_path)
            diff = incompatible(saved["config"], cfg)
            if diff:
                lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                raise TrainingError(
                    f"{self.ckpt_path} was made with a different config ({lines}). Use another "
                    f"--out folder for a new run, or the same settings to resume. Nothing was changed.")
        self.device = dist.init_from_env(cfg.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.seed + self.rank)
        root = resolve_data_root(cfg.data or None)
        self.train_set = load_dataset(cfg.dataset, root, "train")
        self.root = root
        subset = random_subset(len(self.train_set), cfg.train_subset or None, cfg.seed)
        self.sampler = ResumableSampler(subset, cfg.batch_size, cfg.seed, self.rank, self.world)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = int(math.ceil(cfg.epochs * self.steps_per_epoch))
        self.framework = build_framework(cfg).to(self.device)
        self.augment = build_augment(cfg).to(self.device)
        self.model: nn.Module = self.framework
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.framework, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.opt = torch.optim.AdamW(param_groups(self.framework.student), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.amp_dtype = PRECISIONS[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.train_seconds = 0.0  # wall time of training steps, summed over sittings
        self.eval_results: list[dict[str, Any]] = []
        if saved is not None:
            self._restore(saved)
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", enabled=dist.is_main(),
                              truncate_after=self.step)

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "framework": self.framework.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "rng": rng_state(),
                "train_seconds": self.train_seconds + self._sitting_seconds(),
                "eval": self.eval_results}

    def _restore(self, saved: dict[str, Any]) -> None:
        self.framework.load_state_dict(saved["framework"])
        self.opt.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        self.step = saved["step"]
        self.train_seconds = saved.get("train_seconds", 0.0)
        self.eval_results = saved.get("eval", [])
        set_rng_state(saved["rng"])
        if dist.is_main():
            print(f"resuming {self.run_dir} at step {self.step}/{self.total_steps}", flush=True)

    def _sitting_seconds(self) -> float:
        start = getattr(self, "_sitting_start", None)
        return 0.0 if start is None else time.perf_counter() - start - self._eval_seconds

    def save(self) -> None:
        if dist.is_main():
            state = self.state_dict()
            atomic_save(state, self.ckpt_path)
            if self.cfg.keep_every and self.step % self.cfg.keep_every == 0:
                atomic_save(state, self.run_dir / f"checkpoint_{self.step:07d}.pt")
        dist.barrier()

    # --- one step --------------------------------------------------------------------------
    def views_for(self, step: int):
        """Augmented views of this process's part of global batch ``step``.

        Augmentation draws from a generator seeded by ``(seed, step)``, so a resumed run sees the
        same views. In deterministic mode every process augments the whole global batch and keeps
        its rows, so W processes see exactly the views one process would.
        """
        epoch, it = divmod(step, self.steps_per_epoch)
        cfg = self.cfg
        whole = cfg.deterministic and self.world > 1
        idx = self.sampler.global_batch_indices(epoch, it) if whole else self.sampler.batch(epoch, it)
        images = self._fetch(idx).to(self.device, non_blocking=True)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((cfg.seed * 1_000_003 + step) * 131 + (0 if whole else self.rank))
            views = self.augment(images)
        if whole:
            local = cfg.batch_size // self.world
            sl = slice(self.rank * local, (self.rank + 1) * local)
            views.globals = [v[sl] for v in views.globals]
            views.locals = [v[sl] for v in views.locals]
        return views

    def _fetch(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, C, H, W]`` of dataset rows ``idx``.

        In-memory datasets gather in one call; lazily decoded ones (ImageFolder) decode the batch
        in ``num_workers`` threads.
        """
        get_batch = getattr(self.train_set, "get_batch", None)
        if get_batch is not None:
            return get_batch(idx)[0]
        rows = idx.tolist()
        if self.cfg.num_workers > 0:
            if getattr(self, "_pool", None) is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.cfg.num_workers)
            items = list(self._pool.map(self.train_set.__getitem__, rows))
        else:
            items = [self.train_set[i] for i in rows]
        return torch.stack([img for img, _ in items])

    def train_step(self, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.cfg
        t = step / max(1, self.total_steps)
        lr = lr_at(t, cfg.lr * (cfg.batch_size / 256 if cfg.lr_scale else 1.0), cfg.min_lr,
                   cfg.warmup_frac)
        wd = cosine(cfg.weight_decay, cfg.weight_decay_end, t)
        set_hparams(self.opt, lr, wd)
        views = self.views_for(step)
        self.framework.student.train()
        # Free last step's gradients before the forward, not after: on a GPU they would otherwise
        # sit in memory through the forward and raise peak memory by one gradient copy.
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = self.model(views, t)
        self.scaler.scale(out.loss).backward()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.framework.student.parameters(), cfg.clip_grad)
        if isinstance(self.framework, DINO) and step / self.steps_per_epoch < cfg.freeze_last_layer:
            for p in self.framework.last_layer().parameters():
                p.grad = None
        self.scaler.step(self.opt)
        self.scaler.update()
        momentum = cosine(cfg.momentum, cfg.momentum_end, t)
        self.framework.update_teacher(momentum)
        logs = {"lr": lr, "wd": wd, "momentum": momentum, **out.logs}
        return out.loss.detach(), logs

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        main = dist.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._sitting_start, self._eval_seconds = time.perf_counter(), 0.0
        progress = Progress(self.total_steps, self.step, enabled=main, bar=cfg.progress_bar)
        t0, step0, last_good = time.perf_counter(), self.step, self.step
        knn_every = int(round(cfg.knn_every * self.steps_per_epoch)) if cfg.knn_every > 0 else 0
        stop_at = self.total_steps if cfg.max_steps <= 0 else min(self.total_steps, cfg.max_steps)
        local_batch = cfg.batch_size // self.world
        window_t, window_n = time.perf_counter(), 0
        while self.step < stop_at:
            loss, logs = self.train_step(self.step)
            bad |= ~torch.isfinite(loss)
            self.step += 1
            window_n += 1
            last = self.step == stop_at
            if self.step % cfg.log_every == 0 or last:
                if bool(dist.all_reduce_mean(bad.float()) > 0):
                    first = self.step - window_n + 1
                    where = f"at step {self.step}" if first == self.step else (
                        f"between steps {first} and {self.step}")
                    raise TrainingError(
                        f"the loss became NaN or inf {where}; stopped. The last good checkpoint "
                        f"(step {last_good}) is kept at {self.ckpt_path}. "
                        "Lower lr, raise clip_grad or use fp32/bf16.")
                now = time.perf_counter()
                rec = {"step": self.step, "epoch": self.step / self.steps_per_epoch,
                       "loss": float(dist.all_reduce_mean(loss.float())),
                       "img_per_s": window_n * local_batch * self.world / max(1e-9, now - window_t)}
                rec.update({k: float(v) for k, v in logs.items()})
                window_t, window_n = now, 0
                self.log.write(rec)
                progress.update(self.step, rec)
            else:
                progress.update(self.step, None)
            if knn_every and self.step % knn_every == 0 and not last:
                self._evaluate(final=False)
            if self.step % cfg.ckpt_every == 0 or last:
                self.save()
                last_good = self.step
            if cfg.time_limit > 0 and time.perf_counter() - t0 > cfg.time_limit * 60 and not last:
                self.save()
                progress.close()
                if main:
                    print(f"time limit of {cfg.time_limit} min reached at step {self.step}; "
                          "run the same command to continue", flush=True)
                return {"step": self.step, "total_steps": self.total_steps, "finished": False}
        progress.close()
        result: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps,
                                  "finished": self.step >= self.total_steps,
                                  "train_steps_this_run": self.step - step0,
                                  "train_seconds": self.train_seconds + self._sitting_seconds()}
        if self.step >= self.total_steps and cfg.eval_at_end:
            result.update(self._evaluate(final=True))
        if main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(result, indent=2))
        return result

    def _evaluate(self, final: bool) -> dict[str, Any]:
        t_eval = time.perf_counter()
        try:
            return self._evaluate_inner(final)
        finally:
            self._eval_seconds = getattr(self, "_eval_seconds", 0.0) + time.perf_counter() - t_eval

    def _evaluate_inner(self, final: bool) -> dict[str, Any]:
        cfg = self.cfg
        res: dict[str, Any] = {}
        if dist.is_main():
            test_set = load_dataset(cfg.dataset, self.root, cfg.test_split)
            num_classes = len(getattr(self.train_set, "classes", [])) or int(
                self.train_set.labels.max()) + 1
            res = evaluate(self.framework.eval_backbone(), self.train_set, test_set, cfg.dataset,
                           num_classes, self.device, cfg.knn_train, cfg.knn_test, cfg.knn_k,
                           cfg.knn_temperature, linear=cfg.linear_probe and final, seed=cfg.seed,
                           size=cfg.global_size)
            res["step"] = self.step
            self.eval_results.append(res)
            self.log.write({"step": self.step, "eval": res})
            print(f"k-NN top-1 {res['knn_top1']:.2f}%  top-5 {res['knn_top5']:.2f}%  "
                  f"({self.framework.eval_branch} CLS, "
                  f"k={cfg.knn_k}, bank {res['knn_train']}, test {res['knn_test']}, step {self.step})",
                  flush=True)
        dist.barrier()
        return res


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg`` describes; returns the final results."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        dist.cleanup()
