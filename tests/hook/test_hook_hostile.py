"""The hook runs as root on every machine: it must trust nothing it reads. Each test is an
attack: a hostile line server (tests/hook/fake_server.py), or files planted by another user."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hook.fake_server import fake_server, keychest_like, new_key
from tests.hook.support import (
    HOOK,
    HOOK_DEADLINE_S,
    CertbotTree,
    HookRun,
    clean_env,
    run_hook,
    server_env,
)

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hook's file rules are about root")


@pytest.fixture
def tree(tmp_path: Path) -> CertbotTree:
    tree = CertbotTree.create(tmp_path / "state")
    tree.add_lineage("www.example.net", ["www.example.net"])
    return tree


def deploy(tree: CertbotTree, port: int, domains: str = "www.example.net", **extra: str) -> HookRun:
    env = clean_env(
        **{**server_env(port), "RENEWED_DOMAINS": domains, "KEYCHEST_EMAIL": "ops@example.org", **extra}
    )
    return run_hook(tree.install_hook("deploy"), env)


def hook_log(tree: CertbotTree) -> bytes:
    path = tree.logs / "keychest-hook.log"
    return path.read_bytes() if path.exists() else b""


# ------------------------------------------------------------------ what the server says


def test_escape_sequences_from_the_server_reach_neither_output_nor_log(tree: CertbotTree) -> None:
    evil = b"status ok 200 added \x1b]0;owned\x07\x1b[2J\x1b[31mred\r\x9b1m\n"
    with fake_server(keychest_like({"add": lambda _line: evil})) as server:
        run = deploy(tree, server.port)
    assert "added www.example.net: status ok 200 added ?]0;owned??[2J?[31mred" in run.stderr
    for text in (run.stderr.encode(), hook_log(tree)):
        assert b"added www.example.net" in text
        assert not re.search(rb"[\x00-\x08\x0b-\x1f\x7f-\xff]", text), text


@pytest.mark.parametrize("size", [2000, 1_000_000])
def test_a_key_not_of_key_shape_is_never_stored(tree: CertbotTree, size: int) -> None:
    def huge_key(_line: str) -> bytes:
        return b"data " + b"a" * size + b"\nstatus ok 200 new API key; keep it\n"

    with fake_server(keychest_like({"apikey": huge_key})) as server:
        run = deploy(tree, server.port)
    assert run.seconds < HOOK_DEADLINE_S
    assert server.commands() == ["apikey"]  # nothing else is sent with such a key
    assert not tree.state_file.exists() or "aaaaaaaaaaaaaaaaaaaa" not in tree.state_file.read_text()
    assert tree.spooled() == ["www.example.net"]
    assert len(run.stderr) < 5000


def test_a_long_key_in_the_state_file_is_replaced(tree: CertbotTree) -> None:
    # What an old hook stored from a hostile server: every later run was refused with 413.
    tree.state_file.write_text(f"server=127.0.0.1:1\napikey={'a' * 2000}\nclaim=ok\nemail=a@example.org\n")
    with fake_server(keychest_like()) as server:
        tree.state_file.write_text(
            tree.state_file.read_text().replace("127.0.0.1:1", f"127.0.0.1:{server.port}")
        )
        run = deploy(tree, server.port)
    assert "not of key shape" in run.stderr
    assert server.commands() == ["apikey", "claim", "add", "renewal"]
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", tree.state_values()["apikey"])


@pytest.mark.parametrize("code", ["400 bad request", "413 line too long"])
def test_400_and_413_keep_every_domain(tree: CertbotTree, code: str) -> None:
    # An old hook took these as "domain rejected" and dropped the names: monitoring lost for good.
    refuse = f"status error {code}\n".encode()
    with fake_server(keychest_like({"add": lambda _line: refuse})) as server:
        run = deploy(tree, server.port, "www.example.net api.example.net")
    assert sorted(tree.spooled()) == ["api.example.net", "www.example.net"]
    assert "dropped" not in run.stderr
    assert server.commands() == ["apikey", "claim", "add"]  # stopped at the first refusal


def test_only_the_claims_code_is_kept(tree: CertbotTree) -> None:
    refused = b"status error 403 \x1b[31mclaimed elsewhere\nclaim=ok\n"
    with fake_server(keychest_like({"claim": lambda _line: refused})) as server:
        deploy(tree, server.port)
    state = tree.state_values()
    assert state["claim"] == "403"
    assert "\x1b" not in tree.state_file.read_text()


def test_endless_answer_lines_are_not_read_forever(tree: CertbotTree) -> None:
    chatter = b"data x\n" * 5000 + b"status ok 200 added\n"
    with fake_server(keychest_like({"add": lambda _line: chatter})) as server:
        run = deploy(tree, server.port)
    assert "too long" in run.stderr
    assert tree.spooled() == ["www.example.net"]


# ------------------------------------------------------------------ files


def test_files_are_private_whatever_the_umask(tree: CertbotTree) -> None:
    with fake_server(keychest_like()) as server:
        proc = subprocess.run(
            ["bash", str(tree.install_hook("deploy"))],
            env=clean_env(**server_env(server.port), RENEWED_DOMAINS="www.example.net"),
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=lambda: os.umask(0o022),
        )
    assert proc.returncode == 0
    log = tree.logs / "keychest-hook.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600  # was 0644
    assert stat.S_IMODE(tree.state_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tree.hooks_dir.iterdir()) == ["deploy", "keychest_apikey", "post", "pre"]


def test_symlinked_state_is_neither_read_nor_written_through(tree: CertbotTree, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    stolen = new_key()
    target.write_text(f"apikey={stolen}\n")
    tree.state_file.symlink_to(target)
    with fake_server(keychest_like()) as server:
        run = deploy(tree, server.port)
    assert server.requests == []
    assert target.read_text() == f"apikey={stolen}\n"
    assert tree.state_file.is_symlink()
    assert "nothing sent, nothing kept" in run.stderr


def test_fifo_as_spool_does_not_hang_certbot(tree: CertbotTree) -> None:
    os.mkfifo(tree.spool_file)
    with fake_server(keychest_like()) as server:
        run = deploy(tree, server.port)  # an old hook blocked here for ever
    assert run.seconds < HOOK_DEADLINE_S
    assert stat.S_ISFIFO(tree.spool_file.stat().st_mode)
    assert "nothing sent, nothing kept" in run.stderr


def test_files_of_another_user_are_ignored(tree: CertbotTree) -> None:
    email = tree.hooks_dir / "keychest_email"
    email.write_text("attacker@example.org\n")
    os.chown(email, NOBODY, NOBODY)
    tree.write_log("")  # no email from certbot's log: the file would be the only source
    with fake_server(keychest_like()) as server:
        run = deploy(tree, server.port, KEYCHEST_EMAIL="")
    claims = [r for r in server.requests if r.startswith("command claim")]
    assert claims and all("attacker@" not in c for c in claims)
    assert "ignore" in run.stderr and "keychest_email" in run.stderr


def test_a_folder_others_can_write_gets_no_state_and_no_log(tree: CertbotTree, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    with fake_server(keychest_like()) as server:
        run = deploy(
            tree,
            server.port,
            KEYCHEST_STATE_FILE=str(shared / "state"),
            KEYCHEST_LOG=str(shared / "hook.log"),
        )
    assert list(shared.iterdir()) == []
    assert server.requests == []
    assert "stderr only" in run.stderr


def test_symlinked_log_is_not_written_through(tree: CertbotTree, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tree.logs / "keychest-hook.log").symlink_to(victim)
    with fake_server(keychest_like()) as server:
        run = deploy(tree, server.port)
    assert victim.read_text() == "precious\n"
    assert "added www.example.net" in run.stderr  # the work is done, logged to stderr only


def test_wildcard_is_not_globbed_in_the_working_directory(tree: CertbotTree, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "planted.example.com").write_text("")
    env = clean_env(RENEWED_DOMAINS="*.example.com www.example.com")
    with fake_server(keychest_like()) as server:
        env.update(server_env(server.port))
        proc = subprocess.run(
            ["bash", str(tree.install_hook("deploy"))],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
    added = [r.split()[-1] for r in server.requests if r.startswith("command add")]
    assert added == ["www.example.com"]  # an old hook added planted.example.com
    assert "skip *.example.com" in proc.stderr


@pytest.mark.parametrize("name", ["KEYCHEST_TIME_BUDGET", "KEYCHEST_READ_TIMEOUT", "KEYCHEST_PORT"])
def test_numeric_settings_are_never_evaluated(tree: CertbotTree, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    with fake_server(keychest_like()) as server:
        run = deploy(tree, server.port, **{name: f"a[$(touch {marker})]"})
    assert not marker.exists()
    assert f"setting {name}=" in run.stderr and "is not a whole number" in run.stderr
    if name != "KEYCHEST_PORT":
        assert "added www.example.net" in run.stderr  # the default took its place


# ------------------------------------------------------------------ time


def ignoring_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def hook_with_a_hang(tmp_path: Path, fifo: Path) -> Path:
    """The hook with a read from a FIFO nobody writes before its real work: a hang anywhere."""
    text = HOOK.read_text()
    hung = text.replace("\n  find_dirs\n", f"\n  read -r _ <{fifo}\n  find_dirs\n", 1)
    assert hung != text
    path = tmp_path / "hung-hook.sh"
    path.write_text(hung)
    return path


def leftover_processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.slow  # waits out the hook's whole-run bound
def test_whole_run_is_bounded_even_when_sigterm_is_ignored(tree: CertbotTree, tmp_path: Path) -> None:
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    hook = hook_with_a_hang(tmp_path, fifo)
    env = clean_env(**server_env(1), RENEWED_DOMAINS="www.example.net", KEYCHEST_TIME_BUDGET="2")
    start = time.monotonic()
    # certbot-like: output through pipes, waited for until they close; the parent ignores TERM
    proc = subprocess.run(
        ["bash", str(hook)], env=env, capture_output=True, text=True, timeout=60, preexec_fn=ignoring_sigterm
    )
    took = time.monotonic() - start
    assert proc.returncode == 0
    assert 5 <= took < 8  # budget 2 s + 3 s, then TERM (ignored) and KILL a second later
    assert "still running after 5s: stopped" in proc.stderr
    assert leftover_processes(str(hook)) == []


def test_dead_network_session_is_killed_when_sigterm_is_ignored(tree: CertbotTree) -> None:
    # a server that accepts and never answers, with reads allowed longer than the budget
    with fake_server(lambda _line: b"") as server:
        env = clean_env(
            **server_env(server.port),
            RENEWED_DOMAINS="www.example.net",
            KEYCHEST_TIME_BUDGET="2",
            KEYCHEST_READ_TIMEOUT="30",
        )
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", str(tree.install_hook("deploy"))],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=ignoring_sigterm,
        )
    assert time.monotonic() - start < 4
    assert "out of time after 2s" in proc.stderr
    assert tree.spooled() == ["www.example.net"]


# ------------------------------------------------------------------ certbot's command line

UNTRUSTED_CERTBOT = """
import os, sys
# ruid root, euid nobody: a process of another user (its /proc status says so) whose
# command line names a folder of that user's; then the hook runs as root below it.
os.setresuid(0, {nobody}, 0)
pid = os.fork()
if pid == 0:
    os.setresuid(0, 0, 0)
    os.execv("/bin/bash", ["bash", {hook!r}, "post"])
os.waitpid(pid, 0)
"""


def test_certbot_command_line_of_another_user_is_not_trusted(tree: CertbotTree, tmp_path: Path) -> None:
    evil = CertbotTree.create(tmp_path / "evil")
    evil.write_log(
        "2026-11-26 18:47:14,423:DEBUG:certbot._internal.main:certbot version: 2.1.0\n"
        "2026-11-26 18:47:14,423:DEBUG:certbot._internal.main:Arguments: "
        "['-d', 'evil.example', '-m', 'evil@example.org']\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hook = bin_dir / "keychest-hook.sh"
    hook.write_bytes(HOOK.read_bytes())
    fake = bin_dir / "certbot"  # python3 .../certbot --config-dir X: what the hook looks for
    fake.write_text(UNTRUSTED_CERTBOT.format(nobody=NOBODY, hook=str(hook)))
    args = [sys.executable, str(fake), "--config-dir", str(evil.config), "--logs-dir", str(evil.logs)]
    with fake_server(keychest_like()) as server:
        env = clean_env(**server_env(server.port), KEYCHEST_STATE_FILE=str(tree.state_file))
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
        assert "evil" not in " ".join(server.requests), proc.stderr
        # the same command line from a root process is followed (the positive control)
        root_fake = bin_dir / "root" / "certbot"
        root_fake.parent.mkdir()
        root_fake.write_text(f"import subprocess\nsubprocess.run(['bash', {str(hook)!r}, 'post'])\n")
        args[1] = str(root_fake)
        subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert "command add apikey" in " ".join(server.requests)
    assert any(r.endswith("domain evil.example") for r in server.requests)
