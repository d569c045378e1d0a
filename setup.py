"""The build step pyproject.toml cannot say: a wheel carries the migrations, dashboard
sources and runbooks (the top-level folders, their sources) inside the package, where
reliability/shipped.py finds them outside a checkout."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FOLDERS = ("alembic", "dashboards", "runbooks")  # reliability/shipped.py FOLDERS


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        for name in FOLDERS:
            shutil.copytree(
                name,
                Path(self.build_lib) / "reliability" / "_shipped" / name,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )


setup(cmdclass={"build_py": BuildWithShippedFiles})
