"""The README's agent completes sealed, run as a user runs their own file: from a folder that
also holds its own ``agents/`` package (which must not shadow the installed one).

(Prints, sibling imports and the working directory are tested with probe agents in
``tests/test_sealed.py``; every built-in agent in ``tests/test_unseen_tasks.py``.)
"""

from __future__ import annotations

from test_readme import section_code
from tiny_runs import SPLIT, TINY_STREAM

from clbench.harness import evaluate
from clbench.sealed import sandbox


def test_the_readme_agent_completes_sealed(in_shadowing_folder):
    (in_shadowing_folder / "my_agent.py").write_text(section_code("## Write your own agent"))
    result = evaluate("my_agent.py:FineTune", SPLIT, seed=0, device="cpu",
                      env_kwargs=TINY_STREAM)
    assert result.status == "complete", result.error
    assert result.sealed is sandbox.bwrap_status()[0], result.isolation["reason"]
    assert result.reproducible == [True, True]
    assert result.agent["name"] == f"{in_shadowing_folder / 'my_agent.py'}:FineTune"
