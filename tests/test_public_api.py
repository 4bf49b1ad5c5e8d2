"""The public names: every `from angle_jax import ...` in the README and the examples resolves, and
`import angle_jax` alone starts no JAX (train.py sets XLA flags first)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import angle_jax

ROOT = Path(__file__).resolve().parent.parent


def _imported_names(text: str) -> set[str]:
    names = set()
    for block in re.findall(r"from angle_jax import \(?([^)\n]+(?:\n[^)\n]+)*)\)?", text):
        names |= {n.strip() for n in block.replace("\n", ",").split(",") if n.strip() and n.strip() != "\\"}
    return {n.split(" as ")[0] for n in names if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*( as \w+)?", n)}


def test_every_name_the_readme_docs_and_examples_import_from_the_top_resolves():
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.py"))]
    names = set().union(*(_imported_names(p.read_text()) for p in sources))
    assert {"td3", "make_env", "OffPolicyLoop", "off_policy", "xla_cpu"} <= names  # the README's own example
    for name in sorted(names):
        assert getattr(angle_jax, name) is not None, name
    assert set(angle_jax.__all__) >= names


def test_every_public_name_resolves_and_unknown_names_fail_clearly():
    for name in angle_jax.__all__:
        assert getattr(angle_jax, name) is not None, name
    try:
        angle_jax.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("an unknown name resolved")


def test_importing_the_package_starts_no_jax():
    code = "import sys, angle_jax, angle_jax.host_devices, angle_jax.cli; assert 'jax' not in sys.modules; print('OK')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
