"""``python -m tests.architecture``: rewrite the generated part of docs/architecture.md."""

from __future__ import annotations

from tests.architecture.discover import ROOT
from tests.architecture.render import document

DOC = ROOT / "docs" / "architecture.md"

if __name__ == "__main__":
    DOC.write_text(document(DOC.read_text() if DOC.exists() else ""))
    print(f"wrote {DOC.relative_to(ROOT)}")
