"""``python inject.py --kill-in-save N --fraction F -- <simprune args>``: run ``simprune <args>``
with ``torch.save`` wrapped so that the N-th checkpoint is written only up to fraction F of its
bytes (fsynced), then the process kills itself with SIGKILL: a kill in the middle of a checkpoint
write, at a chosen moment, with nothing of Python's clean-up run."""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-in-save", type=int, required=True)
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    real_save = torch.save
    calls = [0]

    def save(obj, f, *a, **k):  # noqa: ANN001, ANN002, ANN003
        calls[0] += 1
        if calls[0] != args.kill_in_save or isinstance(f, (str, os.PathLike)):
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        f.write(data[: int(len(data) * args.fraction)])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save
    from simprune.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
