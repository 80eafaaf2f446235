"""Earlier releases of the program, as a test meets them: the tree of a commit, and what that
release's program declares under the same mocks (run in a process of its own, so that its
``components`` package is its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from io import BytesIO
from pathlib import Path
from typing import Any

from harness import Evaluation, Resource
from pulumi_real import PROJECT_DIR


def release_tree(tmp_path: Path, commit: str) -> Path:
    """The program's files at ``commit`` (``git archive`` of the clone)."""
    archive = subprocess.run(["git", "-C", str(PROJECT_DIR), "archive", commit], capture_output=True, check=False)
    assert archive.returncode == 0, f"the clone must have the commit {commit}: {archive.stderr.decode()}"
    tree = tmp_path / f"release-{commit}"
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as bundle:
        bundle.extractall(tree, filter="data")
    return tree


_DECLARE = textwrap.dedent("""
    import json, sys
    from harness import evaluate
    declared = evaluate(json.loads(sys.argv[1]))
    json.dump({"resources": [{"type": r.type, "name": r.name, "urn": r.urn, "parent": r.parent,
                              "inputs": r.inputs, "outputs": r.outputs} for r in declared.resources],
               "outputs": declared.outputs}, sys.stdout, default=str)
""")


def declared_by_release(tree: Path, config: dict[str, Any]) -> Evaluation:
    """What the release in ``tree`` declares for ``config``, by its own tests/harness.py (the
    resources' inputs and outputs, and the stack outputs; enough to start its pods)."""
    ran = subprocess.run([sys.executable, "-c", _DECLARE, json.dumps(config)], cwd=tree, capture_output=True,
                         text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONPATH": f"{tree}:{tree / 'tests'}"})
    assert ran.returncode == 0, f"the release in {tree} failed to declare:\n{ran.stderr[-4000:]}"
    declared = json.loads(ran.stdout)
    return Evaluation(
        resources=[Resource(**resource, wire_inputs={}, dependencies=[], delete_before_replace=False)
                   for resource in declared["resources"]],
        outputs=declared["outputs"],
    )
