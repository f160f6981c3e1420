"""The documents' claims point at tests that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["docs/SEMANTICS.md", "docs/FORMAT.md", "docs/PYTHON.md", "README.md", "bench/README.md", "docs/UI.md"]


def _defined() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        names.add(path.stem)
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(), re.M))
    return names


def test_every_test_a_document_names_exists():
    defined = _defined()
    missing = []
    for doc in DOCS:
        for name in sorted(set(re.findall(r"\btest_\w+", (ROOT / doc).read_text()))):
            if name not in defined:
                missing.append(f"{doc}: {name}")
    assert not missing, "documents name tests that do not exist:\n" + "\n".join(missing)
