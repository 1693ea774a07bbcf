"""Test root. Its presence puts tests/ on sys.path, so shared helpers (reducer_testkit) import."""
