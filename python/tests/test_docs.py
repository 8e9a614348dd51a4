"""The README's Python example is examples/python/quickstart.py, and what
the README shows it printing is what it prints."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_quickstart_is_the_example_and_prints_what_the_readme_shows():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- python-quickstart -->\n```python\n(.*?)```", readme, re.S).group(1)
    shown = re.search(r"\$ target/python/venv/bin/python examples/python/quickstart.py\n(.*?)```", readme, re.S).group(1)
    example = (ROOT / "examples" / "python" / "quickstart.py").read_text()
    assert code in example, "README's block differs from examples/python/quickstart.py"
    out = subprocess.run([sys.executable, "examples/python/quickstart.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # Which of the two workers ran an item varies from run to run.
    norm = lambda s: re.sub(r"worker=\d+", "worker=N", s)
    assert norm(out.stdout) == norm(shown)
