"""Accuracy studies (``simprune study``): a grid of training runs and its report.

A study recipe (TOML, see ``studies/`` and :mod:`simprune.study.recipe`) names a base training
recipe, methods, keep rates and seeds. Every cell (method × keep rate × seed; a dense method runs
once, not per keep rate) is one :class:`simprune.train.loop.Trainer` run, in-process and one after
the other, in ``<out>/<cell-slug>/seed<k>``, with ``linear_probe = true``. Finished cells
(``results.json`` finished, with ``knn_top1``) are skipped; an interrupted one resumes from its
checkpoint, so the same command continues a study. ``--time-limit`` bounds the whole sitting: each
cell gets the minutes that are left as its ``time_limit`` and the sitting ends with checkpoints.
Several sittings may run at once on one machine, each taking a cell by a lock
(:mod:`simprune.study.locks`).

The report is written into the out folder at the end of every sitting, and by ``--report-only``
from the cell folders alone. Outside a ``runs/`` folder (gitignored) existing report files are only
replaced with ``--overwrite-report``.

- :mod:`.recipe`: the study TOML and its grid of cells (every config checked before anything runs)
- :mod:`.locks`: one sitting per cell (``<cell>/study.lock``)
- :mod:`.runner`: a sitting: the cells trained in turn, the sitting log ``study.json``, the report
- :mod:`.args`: the options of ``simprune study`` and the command line they stand for
- :mod:`.results`: what a cell's folder says about it
- :mod:`.flops`: a cell's training FLOPs as a share of dense (analytic)
- :mod:`.report`: ``results.csv``, ``cells.csv``, ``results.md``; :mod:`.plots`: ``tradeoff.png``

Importing this package stays light (no torch): ``simprune --help`` builds its parser from it.
"""

from simprune.study.args import DESCRIPTION, add_study_args
from simprune.study.runner import run_study

__all__ = ["DESCRIPTION", "add_study_args", "run_study"]
