"""README.md keeps its shape: set-up commands first, CI running the second, no paragraph twice.

A scripted README edit once replaced an empty string and inserted one paragraph between every
character of the file (86 MB); nothing else in the test tier reads README.md, so nothing noticed.
"""

import collections
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _setup_commands() -> list[str]:
    text = README.read_text()
    match = re.match(r"# sepconv\n\n```bash\n(.*?)\n```\n", text, re.DOTALL)
    assert match, "README.md must open with a title and one bash block of set-up commands"
    return match.group(1).splitlines()


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_second():
    main_job, tests = _setup_commands()
    assert "sepconv compile" in main_job and "sepconv validate" in main_job
    assert "sepconv run" in main_job
    assert tests.endswith("python -m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_has_no_paragraph_twice_and_stays_readable():
    text = README.read_text()
    assert len(text) < 400_000, f"README.md is {len(text)} characters: a scripted edit went wrong?"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 80]
    repeated = [p[:80] for p, n in collections.Counter(paragraphs).items() if n > 1]
    assert not repeated, f"paragraphs repeated in README.md: {repeated}"
