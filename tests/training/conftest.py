"""The tiny ranker of tests/services/rank/conftest.py, for the reports that fit on its rows."""

from tests.services.rank.conftest import TRAIN, trained

__all__ = ["TRAIN", "trained"]
