"""Where the shared fixtures live, for every test that reads them.

The repo does not contain them: they sit in `shared/` beside the checkout (`<repo>/../shared`, both
here and in CI, where the repo is cloned elsewhere with a copy of `shared/` next to it). Set
`WINDOWGATE_SHARED_DIR` to point anywhere else. Missing fixtures FAIL the test that needs them
(never skip): a suite that silently skips its fixture tests proves nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DIR_ENV = "WINDOWGATE_SHARED_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`$WINDOWGATE_SHARED_DIR` if set, else `<repo root>/../shared`; fails the test if absent."""
    configured = os.environ.get(SHARED_DIR_ENV)
    path = Path(configured).expanduser() if configured else REPO_ROOT.parent / "shared"
    if not path.is_dir():
        how = f"${SHARED_DIR_ENV}={configured!r}" if configured else f"<repo>/../shared ({path})"
        pytest.fail(
            f"shared fixtures directory not found: {how}. Put a copy of shared/ beside the repo "
            f"or set {SHARED_DIR_ENV} to its path.",
            pytrace=False,
        )
    return path


def fixtures_dir(*parts: str) -> Path:
    """A directory under `shared/fixtures/` (e.g. `fixtures_dir("meta-webhooks")`)."""
    path = shared_dir().joinpath("fixtures", *parts)
    if not path.is_dir():
        pytest.fail(f"fixtures directory not found: {path}", pytrace=False)
    return path


def fixture_bytes(*parts: str) -> bytes:
    """The raw bytes of one fixture file, e.g. `fixture_bytes("meta-webhooks", "01-x.json")`."""
    path = fixtures_dir(*parts[:-1]) / parts[-1]
    if not path.is_file():
        pytest.fail(f"fixture file not found: {path}", pytrace=False)
    return path.read_bytes()
