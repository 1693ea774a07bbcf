"""Accuracy studies (``simprune study``): a grid of training runs and its report.

See :mod:`simprune.study.runner` for the recipe format, how cells run and resume, and the locks
that let sittings run side by side; :mod:`simprune.study.report` writes the report.
"""

from simprune.study.runner import DESCRIPTION, add_study_args, run_study

__all__ = ["DESCRIPTION", "add_study_args", "run_study"]
