"""The README cannot drift from the code: its Python blocks run, its `patchflow` commands parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from patchflow.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def patchflow_commands() -> list[list[str]]:
    """Every `patchflow ...` invocation in the README's bash blocks, split into arguments."""
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                words = shlex.split(part)
                if words and words[0] == "patchflow":
                    commands.append(words[1:])
    return commands


def test_the_readme_has_blocks_to_check():
    assert blocks("python") and len(patchflow_commands()) >= 3


@pytest.mark.parametrize("argv", patchflow_commands(), ids=" ".join)
def test_readme_command_parses(argv):
    args = build_parser(argv).parse_args(argv)  # SystemExit on an unknown flag or a bad value
    assert getattr(args, "func", None) is not None


def test_readme_python_runs(tmp_path, monkeypatch, one_thread):
    # The README's Python uses the shipped model (src/patchflow/pretrained/shapes-world/).
    monkeypatch.delenv("PATCHFLOW_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for block in blocks("python"):
        exec(compile(block, str(README), "exec"), namespace)
    # What the README promises: a 17-frame 64x64 video, written to red.mp4.
    assert namespace["video"].shape == (17, 64, 64, 3) and (tmp_path / "red.mp4").stat().st_size > 0
