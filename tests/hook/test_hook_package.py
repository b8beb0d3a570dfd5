"""The hook as shipped: one file in two places, shellcheck-clean, only allowed tools, and
`keychest hook install/show`."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from keychest.cli.hook import hook
from keychest.hooks import HookSettings, hook_text, parse_server, render_hook
from tests.hook.support import HOOK, PACKAGE_HOOK, require_tool


def test_package_copy_is_byte_identical_and_not_a_link() -> None:
    assert not PACKAGE_HOOK.is_symlink(), "the package copy must be a real file (wheels drop symlinks)"
    assert PACKAGE_HOOK.read_bytes() == HOOK.read_bytes(), (
        "cp hooks/certbot/keychest-hook.sh src/keychest/hooks/keychest-hook.sh"
    )
    assert hook_text().encode() == HOOK.read_bytes()
    assert HOOK.stat().st_mode & stat.S_IXUSR


def test_shellcheck_clean() -> None:
    shellcheck = require_tool("shellcheck")
    proc = subprocess.run([shellcheck, "-x", str(HOOK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_uses_no_curl_python_and_openssl_only_for_tls() -> None:
    text = HOOK.read_text()
    # openssl is called in tls_open (KEYCHEST_TLS=1) and looked for in check_settings only
    tls_open = re.search(r"^tls_open\(\) \{\n.*?^\}\n", text, re.MULTILINE | re.DOTALL)
    assert tls_open is not None
    text = text.replace(tls_open.group(0), "")
    lines = [
        re.sub(r'"[^"]*"|\s#\s.*$', "", line)
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
    ]
    code = "\n".join(line for line in lines if "command -v openssl" not in line)
    for tool in ("curl", "wget", "openssl", "python", "perl", "awk", "nc ", "jq", "socat"):
        assert not re.search(rf"(^|[\s;|(`$]){tool}\b", code), tool


def test_install_writes_a_configured_executable_hook(tmp_path: Path) -> None:
    target_dir = tmp_path / "letsencrypt" / "renewal-hooks" / "post"
    target_dir.parent.mkdir(parents=True)  # certbot made renewal-hooks/; install makes post/
    result = CliRunner().invoke(
        hook,
        [
            "install",
            "--server",
            "monitor.example.net:10123",
            "--dir",
            str(target_dir),
            "--email",
            "ops@example.org",
        ],
    )
    assert result.exit_code == 0, result.output
    installed = target_dir / "keychest-hook.sh"
    assert installed.stat().st_mode & 0o777 == 0o755
    text = installed.read_text()
    assert "KEYCHEST_SERVER=${KEYCHEST_SERVER:-monitor.example.net}\n" in text
    assert "KEYCHEST_PORT=${KEYCHEST_PORT:-10123}\n" in text
    assert "KEYCHEST_EMAIL=${KEYCHEST_EMAIL:-ops@example.org}\n" in text
    # the rest of the file is the shipped hook, unchanged
    assert len(text.splitlines()) == len(HOOK.read_text().splitlines())
    assert subprocess.run(["bash", "-n", str(installed)]).returncode == 0
    assert list(target_dir.iterdir()) == [installed]  # no temporary file left behind
    assert f"{installed} all" in result.output  # the reminder to register what certbot has
    assert "KEYCHEST_TLS=${KEYCHEST_TLS:-0}\n" in text


def test_install_refuses_a_folder_whose_parent_is_missing(tmp_path: Path) -> None:
    target_dir = tmp_path / "letsencrypt" / "renewal-hooks" / "post"  # a typo, or no certbot here
    result = CliRunner().invoke(hook, ["install", "--server", "mon.example", "--dir", str(target_dir)])
    assert result.exit_code != 0
    assert "does not exist" in result.output and str(target_dir.parent) in result.output
    assert not (tmp_path / "letsencrypt").exists()


def test_install_writes_tls_settings(tmp_path: Path) -> None:
    pin = "sha256//" + "A" * 43 + "="
    result = CliRunner().invoke(
        hook, ["install", "--server", "mon.example", "--dir", str(tmp_path), "--pin", pin]
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "keychest-hook.sh").read_text()
    assert "KEYCHEST_TLS=${KEYCHEST_TLS:-1}\n" in text
    assert f"KEYCHEST_PIN=${{KEYCHEST_PIN:-{pin}}}\n" in text
    shown = CliRunner().invoke(hook, ["show", "--server", "mon.example", "--ca-file", "/etc/keychest/ca.pem"])
    assert "KEYCHEST_CA_FILE=${KEYCHEST_CA_FILE:-/etc/keychest/ca.pem}\n" in shown.output
    assert "KEYCHEST_TLS=${KEYCHEST_TLS:-1}\n" in shown.output


@pytest.mark.parametrize(
    "args",
    [
        ["--pin", "sha256//short"],
        ["--pin", "sha256//" + "A" * 43 + "=}$(id)"],
        ["--ca-file", "/etc/ca.pem}$(id)"],
        ["--ca-file", "relative.pem"],
        ["--pin", "sha256//" + "A" * 43 + "=", "--ca-file", "/etc/ca.pem"],
    ],
)
def test_install_refuses_bad_tls_settings(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(hook, ["install", "--server", "mon.example", "--dir", str(tmp_path), *args])
    assert result.exit_code != 0
    assert not (tmp_path / "keychest-hook.sh").exists()


def test_show_prints_the_hook_pristine_or_configured() -> None:
    plain = CliRunner().invoke(hook, ["show"])
    assert plain.exit_code == 0 and plain.output == HOOK.read_text()
    configured = CliRunner().invoke(hook, ["show", "--server", "10.0.0.5"])
    assert "KEYCHEST_SERVER=${KEYCHEST_SERVER:-10.0.0.5}\n" in configured.output
    assert "KEYCHEST_PORT=${KEYCHEST_PORT:-10023}\n" in configured.output


@pytest.mark.parametrize(
    ("server", "email"),
    [
        ("a.example;rm -rf /", None),
        ("a.example}", None),
        ("a.example:99999", None),
        ("a.example", "x@y}$(id)"),
    ],
)
def test_install_refuses_what_would_break_the_script(tmp_path: Path, server: str, email: str | None) -> None:
    args = ["install", "--server", server, "--dir", str(tmp_path)] + (["--email", email] if email else [])
    result = CliRunner().invoke(hook, args)
    assert result.exit_code != 0
    assert not (tmp_path / "keychest-hook.sh").exists()


def test_parse_server_forms() -> None:
    assert parse_server("mon.example") == ("mon.example", 10023)
    assert parse_server("mon.example:1234") == ("mon.example", 1234)
    assert parse_server("[::1]:1234") == ("::1", 1234)
    assert parse_server("::1") == ("::1", 10023)
    assert render_hook(HookSettings("::1", 1234)).count("KEYCHEST_SERVER=${KEYCHEST_SERVER:-::1}") == 1


def test_installed_hook_runs_with_its_settings(tmp_path: Path) -> None:
    # The rendered values are what the script really uses (no env override given).
    CliRunner().invoke(hook, ["install", "--server", "127.0.0.1:9", "--dir", str(tmp_path / "post")])
    script = tmp_path / "post" / "keychest-hook.sh"
    env = {
        "PATH": "/usr/bin:/bin",
        "KEYCHEST_CERTBOT_DIR": str(tmp_path),
        "KEYCHEST_CERTBOT_LOGS": str(tmp_path),
    }
    proc = subprocess.run(
        ["bash", str(script), "deploy"],
        env={**env, "RENEWED_DOMAINS": "x.example"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0
    assert "cannot connect to 127.0.0.1:9" in proc.stderr
    assert shutil.which("bash")
