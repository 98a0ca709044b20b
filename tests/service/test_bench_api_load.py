"""The load benchmark rewrites only its own section of docs/performance.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_FILE = Path(__file__).resolve().parents[2] / "bench" / "api_load_report.py"
_SPEC = importlib.util.spec_from_file_location("api_load_report", _FILE)
assert _SPEC is not None and _SPEC.loader is not None
api_load = importlib.util.module_from_spec(_SPEC)
sys.modules["api_load_report"] = api_load  # dataclasses look their module up there
_SPEC.loader.exec_module(api_load)  # bench/ is a folder of scripts, not an installed package
write_section = api_load.write_section


def test_write_section_replaces_only_api_load(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Training\n\nfast\n\n## API load\n\nold\n\n## Accuracy\n\ngood\n")
    write_section(doc, "## API load\n\nnew numbers\n")
    assert doc.read_text() == (
        "# Performance\n\n## Training\n\nfast\n\n## API load\n\nnew numbers\n\n## Accuracy\n\ngood\n"
    )
    write_section(doc, "## API burst\n\nburst numbers\n", heading="## API burst")
    write_section(doc, "## API load\n\nnewer\n")
    assert doc.read_text() == (
        "# Performance\n\n## Training\n\nfast\n\n## API load\n\nnewer\n\n## Accuracy\n\ngood\n\n"
        "## API burst\n\nburst numbers\n"
    )
    fresh = tmp_path / "fresh.md"
    write_section(fresh, "## API load\n\nx\n")
    assert fresh.read_text() == "# Performance\n\n## API load\n\nx\n"
