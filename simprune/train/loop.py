"""The training loop: data → device augmentation → framework step → optimiser → EMA teacher.

Host syncs happen only every ``log_every`` steps (logging, the non-finite-loss check) and at
checkpoints. Progress ``t`` for every schedule is per iteration: ``step / total_steps``.

A non-finite loss is flagged on the device at every step; the flag is read at every log line and
before every checkpoint (with a check of the weights themselves), so no checkpoint is written
unless every step since the last check had a finite loss: the last good checkpoint is never
overwritten by a broken one.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simprune import dist
from simprune.atomic import atomic_write_text, remove_stale_temps
from simprune.checkpoint import (
    CKPT_NAME,
    CheckpointError,
    atomic_save,
    kept_name,
    load_resumable,
    newest_intact_copy,
    rng_state,
    set_rng_state,
)
from simprune.config import (
    TrainConfig,
    incompatible,
    owns_flops_budget,
    planned_steps,
    run_length_key,
)
from simprune.data import default_cache_dir, resolve_data_root
from simprune.data.loader import train_loader
from simprune.data.sampler import ResumableSampler
from simprune.data.shards import shard_sampler
from simprune.data.split import split_training_set
from simprune.eval.features import random_subset
from simprune.finite import any_nonfinite, state_tensors
from simprune.frameworks import FRAMEWORKS, Batch, Progress
from simprune.interrupt import interrupts_deferred

# the run assembly, also importable from here as before it moved to simprune.run
from simprune.run import (  # noqa: F401
    PRECISIONS,
    build_augment,
    build_framework,
    build_optimizer,
    check_config,
    check_device,
    check_eval_settings,
    data_info,
    load_run,
    load_split,
    note,
    set_hparams,
    size_note,
)
from simprune.train.evaluate import EVAL_PROTOCOLS, check_knn_bank
from simprune.train.folder_lock import FolderBusyError, holding_run_folder
from simprune.train.log import MetricsLog, ProgressBar
from simprune.train.optim import cosine, lr_at


class TrainingError(RuntimeError):
    """A run that cannot start or go on (bad config, incompatible checkpoint, non-finite loss)."""


class NonFiniteError(TrainingError):
    """The loss or the weights became NaN or inf: running the same command again resumes from the
    last good checkpoint and, with the same settings, meets the same fault."""


def plan_line(cfg: TrainConfig, total_steps: int, steps_per_epoch: int, n_images: int) -> str:
    """What the run will do, e.g. ``planned 586 steps (epochs 0.75): 0.75 epochs of 781 steps, ...``."""
    key = run_length_key(cfg)
    given = {"epochs": f"epochs {cfg.epochs:g}", "steps": f"steps {cfg.steps}",
             "images_seen": f"images_seen {cfg.images_seen}"}[key]
    epochs = total_steps / max(1, steps_per_epoch)
    line = (f"planned {total_steps} steps ({given}): {epochs:.3g} epochs of {steps_per_epoch} "
            f"steps, batch {cfg.batch_size}, {n_images} training images, "
            f"{total_steps * cfg.batch_size} images seen")
    if 0 < cfg.max_steps < total_steps:
        line += f"; this sitting stops at max_steps {cfg.max_steps}"
    rc = cfg.reducer
    if rc.method != "dense" and rc.flops_budget:
        if owns_flops_budget(rc.method):
            line += f"; {rc.method} flops budget {rc.flops_budget:g}"
        else:
            line += f"; keep rate {rc.keep_rate:g} solved from flops budget {rc.flops_budget:g}"
    return line


def check_out_dir(run_dir: Path) -> None:
    """The out folder can be created and written, before any data is loaded; creates nothing."""
    if run_dir.exists():
        if not run_dir.is_dir():
            raise TrainingError(f"the out folder {run_dir} is a file, not a folder; pass --out a "
                                "folder (it is created if missing). Nothing was changed.")
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=run_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise TrainingError(f"cannot write in the out folder {run_dir} ({err.strerror}); make it "
                                "writable or pass another --out. Nothing was changed.") from err
        return
    parent = run_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TrainingError(f"cannot create the out folder {run_dir}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TrainingError(f"cannot create the out folder {run_dir}: {parent} is not writable; "
                            "pass another --out")


def check_protocol(cfg: TrainConfig) -> None:
    """The framework's evaluation protocol is one the trainer has (:data:`EVAL_PROTOCOLS`)."""
    protocol = FRAMEWORKS.get(cfg.framework).eval_protocol
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"framework {cfg.framework!r} evaluates by {protocol!r}; known "
                         f"protocols: {', '.join(EVAL_PROTOCOLS)}")


class Trainer:
    """One run in ``cfg.out``: resumes automatically from ``cfg.out/checkpoint.pt``.

    A damaged ``checkpoint.pt`` (empty, truncated, failing its CRC, or holding NaN or inf in its
    weights or optimizer state) is named with its fault; the run resumes from the newest intact
    ``checkpoint_<step>.pt`` copy (``--keep-every``) when there is one, and says which; otherwise
    it stops and says how to start again.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        check_config(cfg)
        check_protocol(cfg)
        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.ckpt_path = self.run_dir / CKPT_NAME
        if dist.is_main():
            check_out_dir(self.run_dir)
            for folder in (self.run_dir, default_cache_dir()):
                removed = remove_stale_temps(folder)
                if removed:
                    note(f"removed {len(removed)} temporary file(s) left in {folder} by a killed "
                         f"run: {', '.join(p.name for p in removed)}")
        saved = self._read_checkpoint()
        if saved is not None:
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
        full = load_split(cfg, root, "train")
        try:
            # the images trained on, and the labelled images evaluation draws from (k-NN bank)
            self.train_set, self.bank_set = split_training_set(full, cfg.held_out, cfg.train_on)
        except ValueError as e:
            raise TrainingError(f"{e} ({cfg.dataset}'s training split)") from None
        self.root = root
        if cfg.train_subset > len(self.train_set):
            part = f" ({cfg.train_on} part of held_out {cfg.held_out})" if cfg.held_out else ""
            raise TrainingError(
                f"train_subset {cfg.train_subset} is larger than the {len(self.train_set)} images of "
                f"{cfg.dataset}'s training split{part}; valid: 1 to {len(self.train_set)}, or 0 for all")
        if cfg.eval_at_end or cfg.knn_every > 0:  # the bank's size is known now, not at the end
            check_knn_bank(cfg, len(self.bank_set), FRAMEWORKS.get(cfg.framework).eval_protocol)
        # the test split is read (and its classes checked against the training split's) before
        # the first step, so a bad split stops the run before it trains, not after
        self.test_set = (load_split(cfg, root, cfg.test_split)
                         if cfg.eval_at_end or cfg.knn_every > 0 else None)
        self.data = data_info(cfg, self.train_set)
        fw_cls = FRAMEWORKS.get(cfg.framework)
        if fw_cls.needs_labels and not self.data.has_labels:
            raise TrainingError(f"framework {cfg.framework!r} needs class labels, but data set "
                                f"{cfg.dataset!r} has none")
        subset = random_subset(len(self.train_set), cfg.train_subset or None, cfg.seed)
        self.framework = build_framework(cfg, self.data).to(self.device)
        make_filter = getattr(self.framework, "sample_filter", None)
        self.filter = make_filter(subset) if make_filter is not None else None
        # tar shards: each process reads its own shards (simprune.data.shards)
        self.sampler = (shard_sampler(self.train_set, subset, cfg.batch_size, cfg.seed, self.rank,
                                      self.world, self.filter)
                        or ResumableSampler(subset, cfg.batch_size, cfg.seed, self.rank, self.world,
                                            self.filter))
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = planned_steps(cfg, self.steps_per_epoch)
        self.augment = build_augment(cfg, self.framework, self.data).to(self.device)
        # a split that is not cached is read by worker processes (None: gathered from memory)
        self.loader = train_loader(
            self.train_set, self.sampler, self.augment, steps_per_epoch=self.steps_per_epoch,
            seed=cfg.seed, num_workers=cfg.num_workers, stop=self.total_steps, device=self.device,
            rank=self.rank, world=self.world, whole=cfg.deterministic and self.world > 1)
        self.model: nn.Module = self.framework
        if self.world > 1:
            self.model = dist.wrap_ddp(self.framework, self.device,
                                       find_unused_parameters=self.framework.idle_parameters)
        self.opt = build_optimizer(cfg, self.framework)
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
    def _read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from: ``checkpoint.pt``, or when it is damaged the newest
        intact ``checkpoint_<step>.pt``; ``None`` for a new run."""
        if not self.ckpt_path.exists():
            return None
        try:
            return load_resumable(self.ckpt_path)  # intact, and finite
        except CheckpointError as err:
            damaged = err
        try:
            copy, saved, skipped = newest_intact_copy(self.run_dir, load_resumable)
        except FileNotFoundError as err:
            older = "".join(f"; {e}" for e in getattr(err, "faults", []))
            raise TrainingError(
                f"cannot resume: {damaged}{older}. There is no intact checkpoint_<step>.pt copy "
                f"(--keep-every makes them) to resume from. To start this run again from step 0, move "
                f"{self.ckpt_path} away (e.g. to {self.ckpt_path.name}.damaged) and run the same "
                "command; or pass another --out.") from damaged
        if dist.is_main():
            also = "".join(f"; skipped {e}" for e in skipped)
            note(f"{damaged}{also}; resuming from the newest intact copy, {copy} (step "
                 f"{saved['step']}). The damaged file is replaced at the next checkpoint.")
        self._good_copy = copy  # the last good checkpoint until the next one is written
        return saved

    def saved_config(self) -> dict[str, Any]:
        """The config as the run saves it: ``data`` is the folder it reads (also when that came
        from ``$SIMPRUNE_DATA``), so that ``simprune eval`` finds it without being told."""
        return {**self.cfg.to_dict(), "data": str(self.root.absolute())}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.saved_config(), "framework": self.framework.state_dict(),
                "eval_branch": self.framework.eval_branch,
                "sampler_filter": self.filter.state_dict() if self.filter is not None else None,
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "total_steps": self.total_steps, "rng": rng_state(),
                "train_seconds": self.train_seconds + self._sitting_seconds(),
                "eval": self.eval_results,
                "data_position": getattr(self.sampler, "position", lambda _: None)(self.step)}

    def _restore(self, saved: dict[str, Any]) -> None:
        self.framework.load_state_dict(saved["framework"])
        self.opt.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.filter is not None and saved.get("sampler_filter") is not None:
            self.filter.load_state_dict(saved["sampler_filter"])
        self.step = saved["step"]
        check = getattr(self.sampler, "check_position", None)
        if check is not None:
            try:
                check(saved.get("data_position"), self.step)
            except ValueError as e:
                raise TrainingError(f"cannot resume {self.run_dir}: {e}") from None
        self.train_seconds = saved.get("train_seconds", 0.0)
        self.eval_results = saved.get("eval", [])
        set_rng_state(saved["rng"])
        if dist.is_main() and self.step < self.total_steps:  # a trained run: run() says what it does
            print(f"resuming {self.run_dir} at step {self.step}/{self.total_steps}", flush=True)

    def _save_on_interrupt(self, bad: torch.Tensor, checked: int, last_good: int | None) -> None:
        """A checkpoint at the current step when the run is stopped by Ctrl-C or SIGTERM (steps are
        never cut in half: the signal waits for the step to end), so the next run resumes where
        this one stopped instead of at the last periodic checkpoint. Its losses and weights are
        checked first (a non-finite state is never saved: :class:`TrainingError` instead).
        Single-process runs only: under torchrun the other processes may be gone, and a
        checkpoint needs them. Not when stopped inside an evaluation (the last checkpoint stands)."""
        if self.world > 1 or self.step == 0 or self.step == last_good:
            return
        if getattr(self, "_evaluating", False):  # stopped inside a k-NN evaluation, which may have
            return  # drawn random numbers: the state is not the step's; the last checkpoint stands
        with interrupts_deferred():  # a second Ctrl-C waits for the checkpoint
            self.check_finite(bad, checked, last_good, weights=True)
            self.save()
        if dist.is_main():
            print(f"stopped at step {self.step}/{self.total_steps}; checkpoint saved, run the same "
                  "command to continue", file=sys.stderr, flush=True)

    def _sitting_seconds(self) -> float:
        start = getattr(self, "_sitting_start", None)
        return 0.0 if start is None else time.perf_counter() - start - self._eval_seconds

    def save(self) -> None:
        if dist.is_main():
            state = self.state_dict()
            atomic_save(state, self.ckpt_path)
            self._good_copy = None
            if self.cfg.keep_every and self.step % self.cfg.keep_every == 0:
                atomic_save(state, self.run_dir / kept_name(self.step))
        dist.barrier()

    def check_finite(self, bad: torch.Tensor, since: int, last_good: int | None,
                     weights: bool) -> None:
        """Stop with :class:`TrainingError` if a loss of steps ``since+1 .. self.step`` was NaN or
        inf (``bad``, accumulated on the device), or, with ``weights``, if any weight or buffer is.

        One host sync (and one all-reduce) for both checks. Called at every log line, and with
        ``weights`` right before every checkpoint, so none is written from a broken state.
        """
        flags = [bad.float()]
        if weights:  # and the optimizer's moments, which a checkpoint also carries
            named = state_tensors(self.framework.state_dict(), self.opt.state_dict())
            flags.append(any_nonfinite((t for _, t in named), self.device).float())
        flags_t = dist.all_reduce_mean(torch.stack([f.to(self.device) for f in flags]))
        loss_bad, weights_bad = (flags_t.tolist() + [0.0])[:2]
        if not (loss_bad > 0 or weights_bad > 0):
            return
        first = since + 1
        where = f"at step {self.step}" if first >= self.step else f"between steps {first} and {self.step}"
        what = ("the loss became NaN or inf " + where) if loss_bad > 0 else (
            f"the weights or optimizer state became NaN or inf by step {self.step} (the losses "
            "were still finite)")
        good = getattr(self, "_good_copy", None) or self.ckpt_path
        kept = (f"The last good checkpoint (step {last_good}) is kept at {good}; no "
                "checkpoint was written from the broken state." if last_good is not None else
                "No checkpoint had been written yet, so nothing was saved.")
        raise NonFiniteError(f"{what}; stopped. {kept} Lower lr, raise clip_grad or use fp32/bf16.")

    # --- one step --------------------------------------------------------------------------
    def batch_for(self, step: int) -> Batch:
        """Augmented views, labels and dataset rows of this process's part of global batch ``step``.

        Augmentation draws from a generator seeded by ``(seed, step)``, so a resumed run sees the
        same views. In deterministic mode every process augments the whole global batch and keeps
        its rows, so W processes see exactly the views one process would.
        """
        epoch, it = divmod(step, self.steps_per_epoch)
        cfg = self.cfg
        whole = cfg.deterministic and self.world > 1
        if self.loader is not None:  # made ahead by worker processes (simprune.data.loader)
            images, labels, idx = self.loader.get(step)
        else:
            idx = self.sampler.global_batch_indices(epoch, it) if whole else self.sampler.batch(epoch, it)
            images, labels = self._fetch(idx)
        images = images.to(self.device, non_blocking=True)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((cfg.seed * 1_000_003 + step) * 131 + (0 if whole else self.rank))
            views = self.augment(images)
        if whole:
            local = cfg.batch_size // self.world
            sl = slice(self.rank * local, (self.rank + 1) * local)
            views.globals = [v[sl] for v in views.globals]
            views.locals = [v[sl] for v in views.locals]
            idx, labels = idx[sl], labels[sl]
        return Batch(views, labels.to(self.device, non_blocking=True), idx.to(self.device))

    def _fetch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images ``[B, C, H, W]`` and int64 labels ``[B]`` of dataset rows ``idx``.

        In-memory datasets gather in one call; lazily decoded ones (ImageFolder) decode the batch
        in ``num_workers`` threads.
        """
        get_batch = getattr(self.train_set, "get_batch", None)
        if get_batch is not None:
            return get_batch(idx)
        rows = idx.tolist()
        if self.cfg.num_workers > 0:
            if getattr(self, "_pool", None) is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.cfg.num_workers)
            items = list(self._pool.map(self.train_set.__getitem__, rows))
        else:
            items = [self.train_set[i] for i in rows]
        return (torch.stack([img for img, _ in items]),
                torch.tensor([int(y) for _, y in items], dtype=torch.int64))

    def train_step(self, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.cfg
        progress = Progress(step, self.total_steps, self.steps_per_epoch)
        t = progress.t
        lr = lr_at(t, cfg.lr * (cfg.batch_size / 256 if cfg.lr_scale else 1.0), cfg.min_lr,
                   cfg.warmup_frac)
        wd = cosine(cfg.weight_decay, cfg.weight_decay_end, t)
        set_hparams(self.opt, lr, wd)
        batch = self.batch_for(step)
        self.framework.trainable().train()
        # Free last step's gradients before the forward, not after: on a GPU they would otherwise
        # sit in memory through the forward and raise peak memory by one gradient copy.
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = self.model(batch, progress)
        self.scaler.scale(out.loss).backward()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.framework.trainable().parameters(), cfg.clip_grad)
        self.framework.before_optimizer_step(progress)
        self.scaler.step(self.opt)
        self.scaler.update()
        after = self.framework.after_step(progress)
        if self.filter is not None:
            self.filter.observe(batch, out, progress)
        logs = {"lr": lr, "wd": wd, **after, **out.logs}
        return out.loss.detach(), logs

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        main = dist.is_main()
        done = self._already_finished()
        if done is not None:
            return done
        if main and self.step >= self.total_steps > 0 and cfg.eval_at_end:
            print(f"{self.run_dir} has trained all {self.total_steps} steps; evaluating it",
                  flush=True)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.saved_config(), indent=2))
            sizes = size_note(cfg)
            if sizes:
                note(sizes)
            print(plan_line(cfg, self.total_steps, self.steps_per_epoch, len(self.sampler.indices)),
                  flush=True)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._sitting_start, self._eval_seconds = time.perf_counter(), 0.0
        progress = ProgressBar(self.total_steps, self.step, enabled=main, bar=cfg.progress_bar)
        t0, step0 = time.perf_counter(), self.step
        # the step of the newest checkpoint on disk (None: none yet), and the last step whose loss
        # was checked: every step after ``checked`` is checked before the next checkpoint
        last_good: int | None = self.step if self.step > 0 else None
        checked = self.step
        knn_every = int(round(cfg.knn_every * self.steps_per_epoch)) if cfg.knn_every > 0 else 0
        stop_at = self.total_steps if cfg.max_steps <= 0 else min(self.total_steps, cfg.max_steps)
        local_batch = cfg.batch_size // self.world
        window_t, window_n = time.perf_counter(), 0
        try:
            while self.step < stop_at:
                # a Ctrl-C or SIGTERM lands between steps: after the step and its log line
                with interrupts_deferred():
                    loss, logs = self.train_step(self.step)
                    bad |= ~torch.isfinite(loss)
                    self.step += 1
                    window_n += 1
                    last = self.step == stop_at
                    if self.step % cfg.log_every == 0 or last:
                        self.check_finite(bad, checked, last_good, weights=False)
                        checked = self.step
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
                saved_now = False
                if self.step % cfg.ckpt_every == 0 or last:
                    self.check_finite(bad, checked, last_good, weights=True)
                    checked = self.step
                    self.save()
                    last_good, saved_now = self.step, True
                if cfg.time_limit > 0 and time.perf_counter() - t0 > cfg.time_limit * 60 and not last:
                    if not saved_now:
                        self.check_finite(bad, checked, last_good, weights=True)
                        self.save()
                    progress.close()
                    if main:
                        print(f"time limit of {cfg.time_limit} min reached at step {self.step}; "
                              "run the same command to continue", flush=True)
                    return {"step": self.step, "total_steps": self.total_steps, "finished": False}
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, between two steps: keep every step done
            progress.close()
            self._save_on_interrupt(bad, checked, last_good)
            raise
        progress.close()
        if self.total_steps == 0 and not self.ckpt_path.exists():
            # a run of no steps (random weights: a study's baseline, `--epochs 0`): its checkpoint
            # holds the initial state, so that `simprune eval` and `simprune finetune` can read it
            self.save()
        result: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps,
                                  "finished": self.step >= self.total_steps,
                                  "train_steps_this_run": self.step - step0,
                                  "train_seconds": self.train_seconds + self._sitting_seconds()}
        if self.step >= self.total_steps and cfg.eval_at_end:
            if step0 == self.step and main:
                # training had ended, the final evaluation had not (stopped, or failed): evaluate
                # now, without leaving a second evaluation line for this step
                self.log.drop(lambda r: "eval" in r and r.get("step") == self.step)
            result.update(self._evaluate(final=True))
            result["evaluated"] = True
        if main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(result, indent=2))
        return result

    def _already_finished(self) -> dict[str, Any] | None:
        """The stored results when this run is finished (trained to the end and, if
        ``eval_at_end``, evaluated): it is not evaluated again."""
        if self.step < self.total_steps:
            return None
        path = self.run_dir / "results.json"
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(res, dict) or not res.get("finished") or res.get("step") != self.step:
            return None
        evaluated = res.get("evaluated") or "knn_top1" in res or "top1" in res
        if self.cfg.eval_at_end and not evaluated:
            return None
        if dist.is_main():
            print(f"{self.run_dir} is already finished (step {self.step}/{self.total_steps}; results "
                  f"in {path}); nothing was trained or evaluated. To evaluate it again, with other "
                  f"settings if you like: simprune eval --ckpt {self.run_dir} [--knn-k K] "
                  "[--knn-train N] [--knn-test N] [--linear]. To train longer, start a new run "
                  "with more epochs (or steps) in another --out: a run's schedules are set by its "
                  "length, so a finished run is not extended.", flush=True)
        return {**res, "already_finished": True}

    def _evaluate(self, final: bool) -> dict[str, Any]:
        t_eval = time.perf_counter()
        self._evaluating = True
        try:
            return self._evaluate_inner(final)
        finally:
            self._evaluating = False
            self._eval_seconds = getattr(self, "_eval_seconds", 0.0) + time.perf_counter() - t_eval

    def _evaluate_inner(self, final: bool) -> dict[str, Any]:
        cfg = self.cfg
        res: dict[str, Any] = {}
        if dist.is_main():
            if self.test_set is None:
                self.test_set = load_split(cfg, self.root, cfg.test_split)
            test_set = self.test_set
            protocol = EVAL_PROTOCOLS[self.framework.eval_protocol]
            res = protocol(self.framework, self.bank_set, test_set, cfg, self.data, self.device,
                           final=final)
            res["step"] = self.step
            self.eval_results.append(res)
            self.log.write({"step": self.step, "eval": res})
            print(res.pop("summary", ""), flush=True)
        dist.barrier()
        return res


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg`` describes; returns the final results."""
    try:
        with holding_run_folder(cfg.out):  # one run per out folder (rank 0 holds it)
            trainer = Trainer(cfg)
            try:
                return trainer.run()
            finally:
                dist.cleanup()
    except FolderBusyError as err:
        raise TrainingError(str(err)) from None
