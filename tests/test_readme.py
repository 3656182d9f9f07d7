"""The README cannot drift from the code: its Python blocks run, its `patchflow` commands (and docs/'s) parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from patchflow.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def blocks(language: str, doc: Path = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", doc.read_text(), flags=re.S)


def patchflow_commands(doc: Path = README) -> list[list[str]]:
    """Every `patchflow ...` invocation in a document's bash blocks, split into arguments
    (after any `VAR=value` prefixes and a `taskset -c N`)."""
    commands = []
    for block in blocks("bash", doc):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                if words[:2] == ["taskset", "-c"]:
                    words = words[3:]
                if words and words[0] == "patchflow":
                    commands.append(words[1:])
    return commands


def test_the_readme_has_blocks_to_check():
    assert blocks("python") and len(patchflow_commands()) >= 3


@pytest.mark.parametrize("argv", patchflow_commands(), ids=" ".join)
def test_readme_command_parses(argv):
    args = build_parser(argv).parse_args(argv)  # SystemExit on an unknown flag or a bad value
    assert getattr(args, "func", None) is not None


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_docs_commands_parse(doc):
    for argv in patchflow_commands(doc):
        try:
            args = build_parser(argv).parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc.name}: `patchflow {' '.join(argv)}` does not parse")
        assert getattr(args, "func", None) is not None, argv


def test_readme_python_runs(tmp_path, monkeypatch, one_thread):
    # The README's Python uses the shipped model (src/patchflow/pretrained/shapes-world/).
    monkeypatch.delenv("PATCHFLOW_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for block in blocks("python"):
        exec(compile(block, str(README), "exec"), namespace)
    # What the README promises: a 17-frame 64x64 video, written to red.mp4.
    assert namespace["video"].shape == (17, 64, 64, 3) and (tmp_path / "red.mp4").stat().st_size > 0
