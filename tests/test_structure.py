"""The stages stay apart: the report never loads torch, and DVC's dependencies cover the code."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import ROOT

IMPORTED = """
import json, sys
import {module}
print(json.dumps(sorted(
    m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)
)))
"""


def _imported_files(module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTED.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def test_the_report_stage_imports_neither_torch_nor_lightning():
    files = _imported_files("pipeline.report.__main__")
    assert not [f for f in files if "/torch/" in f or "lightning" in f]
    assert any(f.endswith("pipeline/report/html.py") for f in files)


def test_each_dvc_stage_depends_on_every_module_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage, module in (
        ("search", "pipeline.search.__main__"),
        ("report", "pipeline.report.__main__"),
    ):
        deps = [str(d) for d in stages[stage]["deps"]]
        ours = [f for f in _imported_files(module) if f.startswith(str(ROOT / "pipeline"))]
        assert ours
        for path in ours:
            relative = path[len(str(ROOT)) + 1 :]
            assert any(relative == d or relative.startswith(d.rstrip("/") + "/") for d in deps), (
                f"{stage} stage imports {relative} but dvc.yaml does not depend on it"
            )


def test_the_config_key_table_is_the_schemas():
    """docs/config.md is what `python -m pipeline.config --keys` prints, and names every key
    of ours that conf/ composes (a key added to a YAML file without a schema entry fails)."""
    from omegaconf import OmegaConf

    from pipeline.config import compose
    from pipeline.config.__main__ import key_table
    from pipeline.config.schema import SCHEMAS, keys

    assert (ROOT / "docs" / "config.md").read_text() == key_table()
    composed = compose([])
    documented = {name for section, schema in SCHEMAS.items() for name, _ in keys(schema, section)}
    for section in SCHEMAS:
        node = OmegaConf.to_container(composed[section])
        for name in _leaves(node, section):
            assert name in documented, f"{name} is in conf/ but not in pipeline/config/schema.py"


def _leaves(node, prefix):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}")
    else:
        yield prefix


def test_every_package_of_the_code_is_in_the_wheel():
    # setuptools' `packages` list is explicit (conf/ ships as pipeline.conf): a folder of code
    # left out of it is missing from `pip install .`, though an editable install still works.
    tomllib = __import__("tomllib") if sys.version_info >= (3, 11) else None
    if tomllib is None:
        import pytest

        pytest.skip("tomllib needs Python 3.11")
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    code = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "pipeline").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert code - listed == set()


def test_every_guarantee_has_tests_that_exist():
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What is guaranteed", 1)[1].split("\n## ", 1)[0]

    def words(bold: str) -> str:
        return bold.strip("*").rstrip(":,")

    promised = [words(b) for b in re.findall(r"^- (\*\*.+?\*\*)", section, flags=re.MULTILINE)]
    claims = (ROOT / "docs" / "claims.md").read_text()
    rows = {words(line.split(" | ")[0].lstrip("| ").strip()): line for line in claims.splitlines()}
    assert promised and [p for p in promised if p not in rows] == []
    cited = re.findall(r"`(tests/\w+\.py)::(\w+)`", claims)
    assert cited
    for path, name in cited:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.MULTILINE), (
            f"{path}::{name} does not exist"
        )
    for promise in promised:  # each row names at least one test
        assert "tests/" in rows[promise], promise
