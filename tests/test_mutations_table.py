"""tests/mutations.py's table stays usable: every mutation's old text occurs exactly once in its file, names are
unique, and every covering test file exists (no test is run here; `python tests/mutations.py` runs them)."""
from pathlib import Path

import mutations

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutation_still_applies_exactly_once():
    """A code change that moves or rewrites a mutated line makes its entry stale: fix the entry with the change."""
    assert mutations.stale_entries() == []
    assert 25 <= len(mutations.MUTATIONS) <= 50


def test_covering_test_files_exist():
    for m in mutations.MUTATIONS:
        for arg in m.tests:
            if arg.startswith("tests"):
                assert (ROOT / arg.split("::")[0]).exists(), (m.name, arg)
