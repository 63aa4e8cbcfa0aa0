"""Mutation testing: does a module's own test file notice when a line of it is changed?

    .venv/bin/python -m tests.mutation signing receiver/states.py receiver/store

Each argument is a module or a folder of modules. For each module, cosmic-ray changes one
thing at a time (an operator, a constant, a condition negated, a loop skipped) and runs the
module's own tests against every such mutant: ``tests/<path>/test_<name>.py`` (and any
``test_<name>_<part>.py`` beside it), mirroring the package, or the package's test folder
for a module without a test file of its own. A mutant the tests pass with
survives. The work happens in a throwaway copy of the tree, so the working tree is never
changed and other work can go on meanwhile; mutants run one at a time.

Two kinds of mutant are skipped before they run, since neither can change behaviour:
those inside type annotations (with ``from __future__ import annotations`` none is
evaluated), and the bare ``*`` of a parameter list "replaced" as if it were a product.

Prints one line per module (``MUTATION <module> mutants=.. killed=.. survived=..
skipped=.. incompetent=.. score=..%``), then each survivor as a diff. Slow: minutes per
module, so it is not part of the normal test run.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

ROOT = Path(__file__).resolve().parent.parent
# Modules whose tests live in another module's test file.
OWN_TESTS = {"receiver/store/schema.py": "tests/store/test_store.py"}
# A mutant whose tests run this many times longer than the unchanged module's is an
# endless loop: counted as killed.
TIMEOUT_FACTOR, MIN_TIMEOUT = 10, 30.0


@dataclass
class Result:
    module: str
    killed: int = 0
    skipped: int = 0
    incompetent: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def mutants(self) -> int:
        return self.killed + len(self.survivors) + self.skipped + self.incompetent

    @property
    def score(self) -> float:
        judged = self.killed + len(self.survivors)
        return 100.0 * self.killed / judged if judged else 100.0

    def line(self) -> str:
        return (
            f"MUTATION {self.module} mutants={self.mutants} killed={self.killed}"
            f" survived={len(self.survivors)} skipped={self.skipped}"
            f" incompetent={self.incompetent}"
            f" score={self.score:.1f}%"
        )


def own_tests(module: str) -> list[str]:
    """The module's mirror in tests/ (a package's __init__ is tested as the package)."""
    if module in OWN_TESTS:
        return [OWN_TESTS[module]]
    path = Path(module)
    parts = path.parent.parts[1:] if path.parts[0] == "receiver" else path.parent.parts
    stem = path.parent.name if path.stem == "__init__" else path.stem
    mirrored = Path("tests", *parts, f"test_{stem}.py")
    if (ROOT / mirrored).exists():
        # A module's tests may be split over test_<name>_<part>.py files: all are its own.
        parts_of = sorted((ROOT / mirrored.parent).glob(f"test_{stem}_*.py"))
        return [str(mirrored), *(str(p.relative_to(ROOT)) for p in parts_of)]
    # A module without a file of its own is tested by its package's tests (the store's
    # smaller modules are exercised through the Store).
    package = Path("tests", *parts)
    if parts and path.stem != "__init__" and any((ROOT / package).glob("test_*.py")):
        return [str(package)]
    raise SystemExit(f"{module}: no test file {mirrored} mirrors it")


def modules(targets: list[str]) -> list[str]:
    found: list[str] = []
    for target in targets:
        path = (ROOT / target).resolve()
        if path.is_dir():
            found += [str(p.relative_to(ROOT)) for p in sorted(path.glob("*.py"))]
        elif path.suffix == ".py" and path.exists():
            found.append(str(path.relative_to(ROOT)))
        else:
            raise SystemExit(f"{target}: not a module or a folder of modules")
    # An __init__ that only re-exports has nothing of its own to test.
    return [m for m in found if Path(m).name != "__init__.py" or own_tests_exist(m)]


def own_tests_exist(module: str) -> bool:
    try:
        own_tests(module)
    except SystemExit:
        return False
    return True


Span = tuple[tuple[int, int], tuple[int, int]]


def annotation_spans(source: str) -> list[Span]:
    """Where the module's annotations are, as (line, column) from and to."""
    spans = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for annotation in filter(None, found):
            assert annotation.end_lineno is not None and annotation.end_col_offset is not None
            spans.append(
                (
                    (annotation.lineno, annotation.col_offset),
                    (annotation.end_lineno, annotation.end_col_offset),
                )
            )
    return spans


def is_bare_star(lines: list[str], line: int, column: int) -> bool:
    """Whether the ``*`` at (line, column) only marks keyword-only parameters."""
    text = lines[line - 1]
    return text[column : column + 1] == "*" and text[column + 1 :].lstrip()[:1] in (",", ")")


def skip_unchangeable(session: Path, source: str) -> None:
    spans = annotation_spans(source) if "from __future__ import annotations" in source else []
    lines = source.splitlines()
    skipped = WorkResult(worker_outcome=WorkerOutcome.SKIPPED)
    with use_db(str(session)) as db:
        for item in list(db.work_items):
            (mutation,) = item.mutations
            at = (line, column) = tuple(mutation.start_pos)
            if any(start <= at < end for start, end in spans) or is_bare_star(lines, line, column):
                db.set_result(item.job_id, skipped)


def copy_tree(into: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)


def run(module: str, tree: Path) -> Result:
    tests = " ".join(own_tests(module))
    command = f"{sys.executable} -m pytest -n 0 -x -q -p no:cacheprovider {tests}"
    started = time.monotonic()
    baseline = subprocess.run(command.split(), cwd=tree, capture_output=True, text=True)
    if baseline.returncode != 0:
        raise SystemExit(f"{module}: its tests fail before any mutation:\n{baseline.stdout}")
    timeout = max(MIN_TIMEOUT, TIMEOUT_FACTOR * (time.monotonic() - started))
    name = module.replace("/", "_")
    config, session = tree / f"{name}.toml", tree / f"{name}.sqlite"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    tool = Path(sys.executable).parent / "cosmic-ray"
    subprocess.run([tool, "init", config, session], cwd=tree, check=True)
    skip_unchangeable(session, (tree / module).read_text())
    subprocess.run([tool, "exec", config, session], cwd=tree, check=True)
    dump = subprocess.run(
        [tool, "dump", session], cwd=tree, capture_output=True, text=True, check=True
    ).stdout
    result = Result(module)
    for line in dump.splitlines():
        item, outcome = json.loads(line)
        if outcome is not None and outcome["worker_outcome"] == "skipped":
            result.skipped += 1
        elif outcome is None or outcome["worker_outcome"] != "normal":
            result.incompetent += 1
        elif outcome["test_outcome"] == "survived":
            (mutation,) = item["mutations"]
            where = f"{module}:{mutation['start_pos'][0]} {mutation['operator_name']}"
            result.survivors.append(f"{where}\n{outcome['diff']}")
        elif outcome["test_outcome"] == "killed":
            result.killed += 1
        else:
            result.incompetent += 1
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__)
    parser.add_argument("targets", nargs="+", help="modules or folders, from the repository root")
    args = parser.parse_args(argv)
    results = []
    for module in modules(args.targets):
        with tempfile.TemporaryDirectory(prefix="vidhook-mutation-") as scratch:
            tree = Path(scratch)
            copy_tree(tree)
            result = run(module, tree)
        results.append(result)
        print(result.line(), flush=True)
        for survivor in result.survivors:
            print(survivor, flush=True)
    print()
    for result in results:
        print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
