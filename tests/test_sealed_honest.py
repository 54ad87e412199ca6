"""Honest agents complete sealed, whatever they print and however their files are laid out,
run from a folder that holds its own ``agents/`` package (which must not shadow ours)."""

from __future__ import annotations

import textwrap

import pytest
from test_readme import section_code
from tiny_runs import SPLIT, TINY_STREAM

from clbench.harness import evaluate
from clbench.sealed import sandbox

SANDBOX, WHY_NOT = sandbox.bwrap_status()

CHATTY = '''
import atexit
import sys

from baselines.naive import Naive

print("imported, no newline", end="")
atexit.register(lambda: print('{"at": "exit"', end=""))


class Chatty(Naive):
    """Naive that writes half lines, JSON-looking text and bytes to stdout and stderr."""

    def learn(self, task):
        print("learning", task.name, end="")
        sys.stdout.write('{"state": ')
        sys.stderr.write("\\x00 no newline on stderr")
        super().learn(task)

    def predict(self, x, task_id):
        print('{"labels": [2, 2]}', end="")
        sys.stdout.flush()
        return super().predict(x, task_id)
'''

HELPER = '''
EPOCHS_FROM_THE_SIBLING = 1
'''

WITH_SIBLING = '''
from helper import EPOCHS_FROM_THE_SIBLING

from baselines.naive import Naive


class UsesASibling(Naive):
    def __init__(self, device="cpu"):
        super().__init__(device, epochs=EPOCHS_FROM_THE_SIBLING)
'''


def run_file(path, class_name: str, **agent_kwargs):
    return evaluate(f"{path}:{class_name}", SPLIT, seed=0, device="cpu",
                    env_kwargs=TINY_STREAM, agent_kwargs=agent_kwargs)


@pytest.fixture(scope="module")
def honest():
    return evaluate("naive", SPLIT, seed=0, device="cpu", env_kwargs=TINY_STREAM,
                    agent_kwargs={"epochs": 1})


def assert_sealed_and_complete(result):
    assert result.status == "complete", result.error
    assert result.sealed is SANDBOX, result.isolation["reason"]
    assert result.reproducible == [True, True]


def test_an_agent_that_prints_anything_anytime_completes(in_shadowing_folder, honest):
    (in_shadowing_folder / "chatty.py").write_text(CHATTY)
    result = run_file("chatty.py", "Chatty", epochs=1)
    assert_sealed_and_complete(result)
    assert result.accuracy == honest.accuracy  # the prints changed nothing


def test_an_agent_file_importing_a_sibling_module_completes(in_shadowing_folder, tmp_path,
                                                            honest):
    folder = tmp_path / "elsewhere"  # not the working directory: the file's own folder
    folder.mkdir()
    (folder / "helper.py").write_text(HELPER)
    (folder / "agent.py").write_text(WITH_SIBLING)
    result = run_file(folder / "agent.py", "UsesASibling")
    assert_sealed_and_complete(result)
    assert result.accuracy == honest.accuracy


def test_the_readme_agent_completes_sealed(in_shadowing_folder):
    (in_shadowing_folder / "my_agent.py").write_text(textwrap.dedent(section_code(
        "## Write your own agent")))
    result = run_file("my_agent.py", "FineTune")
    assert_sealed_and_complete(result)
    assert result.agent["name"].endswith("my_agent.py:FineTune")
