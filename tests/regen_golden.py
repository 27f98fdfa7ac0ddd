"""Rewrite tests/golden/ from the current templates and site configs (then review `git diff`).

    python tests/regen_golden.py
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_templates import GOLDEN, SITES, render_site


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for site in SITES:
            (GOLDEN / site).mkdir(parents=True, exist_ok=True)
            for name, text in render_site(site, Path(tmp)).items():
                (GOLDEN / site / name).write_text(text)
                print(f"wrote {GOLDEN / site / name}")
    stale = sorted(p for p in GOLDEN.iterdir() if p.name not in SITES)
    for path in stale:
        print(f"not a stock site any more, remove it: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
