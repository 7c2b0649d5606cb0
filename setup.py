"""The package list, which pyproject.toml cannot say alone: every dbkit* package found in the
tree (so a new subpackage ships without anyone remembering to list it), plus dbkit.migrations,
which lives at the top of the repository (pyproject.toml's package-dir maps it)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["dbkit", "dbkit.*"]), "dbkit.migrations"])
