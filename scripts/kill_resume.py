"""Kill-and-resume comparison, from a clean clone: SIGKILL a tiny real training run at random
moments (some in the middle of a checkpoint write), run the same command again, and compare the
per-step losses with an uninterrupted run, bit for bit.

    python scripts/kill_resume.py                 # 5 trials, 2 of them during checkpoint writes
    python scripts/kill_resume.py --trials 8 --in-save 3 --seed 7

The committed state (``HEAD``) of this repository is cloned into a temporary folder and every run
uses that clone's code (``PYTHONPATH``), so uncommitted changes play no part. The run is the fault
suite's (``tests/faults/faultkit.py``): DINO + SimPrune with 2 local views, 12 steps of batch 16 on
256 CIFAR-10 images, a checkpoint and a kept copy every 3 steps, deterministic. Needs
``$SIMPRUNE_DATA`` (default ``../shared/data``); ``$SIMPRUNE_CACHE`` holds the decoded data.
Prints one line per trial; exits 1 if any trial differs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5, help="kill-and-resume trials (default 5)")
    p.add_argument("--in-save", type=int, default=2,
                   help="how many of them kill during a checkpoint write (default 2)")
    p.add_argument("--seed", type=int, default=None, help="seed of the random moments (default: clock)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (clone and runs)")
    args = p.parse_args()
    if not 0 <= args.in_save <= args.trials:
        p.error("--in-save must be between 0 and --trials")
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    rng = random.Random(seed)
    os.environ.setdefault("SIMPRUNE_DATA", str(REPO.parent / "shared" / "data"))
    data_root = Path(os.environ["SIMPRUNE_DATA"])
    if not (data_root / "cifar10-jpg.tar.gz").exists():
        print(f"kill_resume: no cifar10-jpg.tar.gz in {data_root}; set SIMPRUNE_DATA", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="kill_resume."))
    try:
        clone = work / "clone"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        sys.path.insert(0, str(clone / "tests" / "faults"))
        import faultkit as fk  # the clone's

        where = subprocess.run([fk.PY, "-c", "import simprune; print(simprune.__file__)"],
                               env=fk.run_env(data_root), cwd=fk.REPO, capture_output=True, text=True,
                               check=True).stdout.strip()
        if not where.startswith(str(clone)):
            print(f"kill_resume: the runs would import simprune from {where}, not the clone",
                  file=sys.stderr)
            return 2
        print(f"clean clone of {REPO} at {commit} in {clone}; simprune from {where}")
        print(f"seed {seed}; {args.trials} trials, {args.in_save} during checkpoint writes; "
              f"{fk.TOTAL_STEPS} steps, checkpoint + kept copy every {fk.FAULT_RUN['ckpt_every']}")

        t0 = time.perf_counter()
        ref = work / "reference"
        res = fk.run(fk.train_argv(ref), data_root)
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 2
        reference = fk.step_losses(ref)
        print(f"reference: uninterrupted, {len(reference)} steps in {time.perf_counter() - t0:.0f} s")

        kinds = ["save"] * args.in_save + ["step"] * (args.trials - args.in_save)
        rng.shuffle(kinds)
        every = int(fk.FAULT_RUN["ckpt_every"])
        saves = 2 * (fk.TOTAL_STEPS // every)  # checkpoint.pt and the kept copy at each
        equal = 0
        for i, kind in enumerate(kinds, start=1):
            run_dir = work / f"trial{i}"
            argv = fk.train_argv(run_dir)
            if kind == "step":
                aim = rng.randint(1, fk.TOTAL_STEPS - 1)
                logged = fk.kill_at_step(argv, data_root, run_dir, aim)
                moment = f"SIGKILL at a random step: aimed after step {aim}, {logged} steps logged"
            else:
                nth, fraction = rng.randint(1, saves), round(rng.uniform(0.05, 0.95), 2)
                step = every * ((nth + 1) // 2)
                target = "checkpoint.pt" if nth % 2 else f"checkpoint_{step:07d}.pt"
                res = fk.run(argv, data_root, kill_in_save=nth, fraction=fraction)
                if res.returncode != -9:
                    print(f"trial {i}: the run was not killed (exit {res.returncode})\n{res.stderr}")
                    continue
                moment = (f"SIGKILL during checkpoint write #{nth} ({target}, step {step}) at "
                          f"{fraction:.0%} of its bytes; temporary files left: "
                          f"{len(fk.temp_files(run_dir))}")
            res = fk.run(argv, data_root)
            got = fk.step_losses(run_dir)
            resumed = next((ln for ln in res.stdout.splitlines() if ln.startswith("resuming")),
                           "started again from step 0")
            same = res.returncode == 0 and got == reference
            diff = [s for s in reference if got.get(s) != reference[s]]
            left = fk.temp_files(run_dir)
            verdict = "bitwise equal" if same else (
                f"NOT equal (exit {res.returncode}; steps differing: {diff[:5]})")
            equal += same
            print(f"trial {i}: {moment}; {resumed.replace(str(run_dir), '<run>')}; "
                  f"{len(got)}/{len(reference)} steps {verdict}; temporary files after: {len(left)}")
        print(f"{equal}/{len(kinds)} trials bitwise equal to the uninterrupted run "
              f"({time.perf_counter() - t0:.0f} s)")
        return 0 if equal == len(kinds) else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
