"""Readers for the files in deploy/, shared by the tests of this package.

The YAML reader understands just the subset compose.yaml uses and refuses the rest, so a
compose file that outgrows it fails its test instead of being half read.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def read(name: str) -> str:
    return (DEPLOY / name).read_text(encoding="utf-8")


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for raw in read("Dockerfile").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, args = (pending + line).partition(" ")
        pending = ""
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), " ".join(args.split())))
    return stages


def instructions(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [args for name, args in stage if name == word]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", read("README.md"), re.S)


def yaml_scalar(text: str) -> str:
    if text[:1] in "[{&*|>!'":
        raise ValueError(f"outside the YAML subset this test reads: {text}")
    return str(json.loads(text)) if text[:1] == '"' else text


def yaml_block(lines: list[tuple[int, str]], i: int) -> tuple[object, int]:
    """Block mappings and sequences of plain or quoted scalars: what compose.yaml uses."""
    indent = lines[i][0]
    if lines[i][1].startswith("- "):
        items: list[object] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            item = lines[i][1][2:].strip()
            if re.match(r"[\w.-]+:( |$)", item):  # "- key: value" opens a mapping
                lines[i] = (indent + 2, item)
                value, i = yaml_block(lines, i)
            else:
                value, i = yaml_scalar(item), i + 1
            items.append(value)
        return items, i
    mapping: dict[str, object] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        key, colon, rest = lines[i][1].partition(":")
        if not colon or (rest and not rest.startswith(" ")):
            raise ValueError(f"not a mapping entry: {lines[i][1]}")
        assert yaml_scalar(key) not in mapping, f"duplicate key {key}"
        i += 1
        nested = i < len(lines) and (
            lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("- "))
        )
        if rest.strip():
            mapping[yaml_scalar(key)] = yaml_scalar(rest.strip())
        elif nested:
            mapping[yaml_scalar(key)], i = yaml_block(lines, i)
        else:
            mapping[yaml_scalar(key)] = None
    return mapping, i


def compose(name: str = "compose.yaml") -> dict:
    lines = []
    for raw in read(name).splitlines():
        # compose.yaml quotes no "#", so a comment is whatever follows one.
        if line := re.sub(r"(^|\s)#.*", "", raw).rstrip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
    document, end = yaml_block(lines, 0)
    assert end == len(lines), f"unparsed from line: {lines[end]}"
    assert isinstance(document, dict)
    return document


def env_example(commented: bool = False) -> list[str]:
    pattern = r"^# ([A-Z][A-Z0-9_]*)=$" if commented else r"^([A-Z][A-Z0-9_]*)=$"
    return re.findall(pattern, read("env.example"), re.M)


def vidhook_commands(text: str, subcommands: set[str]) -> list[list[str]]:
    """The arguments of each `vidhook SUBCOMMAND ...` in a shell line, up to an operator."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands = []
    for i, token in enumerate(tokens[:-1]):
        if Path(token).name == "vidhook" and tokens[i + 1] in subcommands:
            rest = tokens[i + 1 :]
            stop = next((j for j, t in enumerate(rest) if re.fullmatch(r"[;&|<>()]+", t)), None)
            commands.append(rest[:stop])
    return commands
