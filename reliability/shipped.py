"""Where the files the suite ships beside its code are: the database migrations, the
dashboard sources and the runbooks.

In a checkout (and an editable install) they are the top-level folders `alembic/`,
`dashboards/` and `runbooks/`, the sources; a wheel carries copies of them inside the
package, under `reliability/_shipped/` (setup.py copies them at build time), so `db
upgrade`, `dashboards build`, `runbook list` and the demo work wherever it is installed.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
FOLDERS = ("alembic", "dashboards", "runbooks")


def folder(name: str) -> Path:
    """The shipped folder `name` (one of FOLDERS): the wheel's copy where there is one,
    else the checkout's. Never a folder beside the installed package: in site-packages,
    `alembic/` is the Alembic library itself."""
    assert name in FOLDERS, name
    copy = PACKAGE / "_shipped" / name
    return copy if copy.is_dir() else PACKAGE.parent / name
