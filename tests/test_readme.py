"""The README's promises: its agent example runs as written, its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section_code(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "run"], ["make", "test"]]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "make test"


def test_write_your_own_agent_runs_as_written(tmp_path):
    code = section_code("## Write your own agent")
    assert len([line for line in code.splitlines() if line.strip()]) <= 30
    script = tmp_path / "my_agent.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = eval(done.stdout.strip().splitlines()[-1])  # the printed metrics dict
    assert metrics["acc"] > 0.7  # well above chance (0.5)
