"""The hook alone, fed certbot logs of both versions (real captures, see fixtures/capture.sh)
with the environment certbot gives each kind of hook, against a live `keychest serve`."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.hook.support import (
    HOOK,
    HOOK_DEADLINE_S,
    CertbotTree,
    clean_env,
    cli_json,
    domains,
    dropping_server,
    fixture_log,
    run_hook,
    runs,
    server_env,
    silent_server,
)
from tests.support.net import free_port
from tests.support.server import LiveServer

ABC = ["a.example", "b.example", "c.example"]
DE = ["d.example", "e.example"]
ALL = ABC + DE
VERSIONS = ["2.1.0", "5.8.0"]


@pytest.fixture
def tree(tmp_path: Path) -> CertbotTree:
    tree = CertbotTree.create(tmp_path / "state")
    tree.add_lineage("a.example", ABC)
    tree.add_lineage("d.example", DE)
    return tree


def post_env(tree: CertbotTree, version: str, server: LiveServer) -> dict[str, str]:
    """What each certbot version hands a post hook after renewing a.example and d.example."""
    env = clean_env(**server_env(server.line_port), RENEWED_LINEAGE=str(tree.config / "live" / "d.example"))
    if version == "2.1.0":
        env["RENEWED_DOMAINS"] = " ".join(DE)  # leaked from the last deploy: only d's lineage
    else:
        env["RENEWED_DOMAINS"] = " ".join(ALL)
        env["FAILED_DOMAINS"] = ""
    return env


def registered(server: LiveServer) -> dict[str, str]:
    return {str(d["domain"]): str(d["account_email"]) for d in domains(server)}


def older_run_for_other_names(version: str) -> str:
    """A first run of long ago, for names that the current run does not touch."""
    first = runs(fixture_log(version))[0]
    for name in ABC:
        first = first.replace(name, "old-" + name)
    return first


# ------------------------------------------------------------------ which domains


@pytest.mark.parametrize("version", VERSIONS)
def test_post_hook_reports_every_lineage_of_the_last_run_only(
    version: str, tree: CertbotTree, live_server: LiveServer
) -> None:
    tree.write_log(older_run_for_other_names(version) + fixture_log(version))
    hook = tree.install_hook("post")

    run = run_hook(hook, post_env(tree, version, live_server))

    assert run.returncode == 0, run.stderr
    # every name of both lineages, though certbot's summary said "a.example and 2 more" and
    # pebble reused authorizations (no challenge line for some names); nothing from older runs
    assert registered(live_server) == {name: "admin@example.org" for name in ALL}
    state = tree.state_values()
    assert state["claim"] == "ok" and state["email"] == "admin@example.org"
    assert {d["apikey_prefix"] for d in domains(live_server)} == {state["apikey"][:8]}
    assert stat.S_IMODE(tree.state_file.stat().st_mode) == 0o600
    assert not tree.spool_file.exists()
    assert "post:" in run.stderr and run.stderr.count("added a.example:") == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_and_more_completed_from_the_lineage_certificate(
    version: str, tree: CertbotTree, live_server: LiveServer
) -> None:
    # Without the newOrder payload and challenge lines, "a.example and 2 more" names one of
    # three: the hook must read b and c from live/a.example/cert.pem.
    log = "".join(
        line
        for line in fixture_log(version).splitlines(keepends=True)
        if '"identifiers": [' not in line and "challenge for" not in line
    )
    tree.write_log(log)
    hook = tree.install_hook("post")

    run = run_hook(hook, clean_env(**server_env(live_server.line_port)))

    assert run.returncode == 0, run.stderr
    assert sorted(registered(live_server)) == sorted(ALL)
    assert "1 of 3 domains of lineage a.example; reading its certificate" in run.stderr


def test_lineage_not_due_is_not_reported(tree: CertbotTree, live_server: LiveServer) -> None:
    # The wording of a non-forced renew where one lineage is due and one is not (e2e README).
    prefix = "2026-11-26 18:47:14,423:DEBUG:certbot._internal"
    tree.write_log(
        f"{prefix}.main:certbot version: 2.1.0\n"
        f"{prefix}.main:Arguments: ['--no-random-sleep-on-renew', '--config-dir', '<STATE>/certbot/config']\n"
        f"{prefix}.display.obj:Notifying user: Processing <STATE>/certbot/config/renewal/a.example.conf\n"
        f"{prefix}.display.obj:Notifying user: Certificate not yet due for renewal\n"
        f"{prefix}.display.obj:Notifying user: Processing <STATE>/certbot/config/renewal/d.example.conf\n"
        f"{prefix}.renewal:Certificate is due for renewal, auto-renewing...\n"
        f"{prefix}.display.obj:Notifying user: Renewing an existing certificate for d.example and e.example\n"
    )
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(live_server.line_port)))
    assert run.returncode == 0
    assert sorted(registered(live_server)) == DE


@pytest.mark.parametrize("version", VERSIONS)
def test_deploy_hook_reports_its_own_lineage(
    version: str, tree: CertbotTree, live_server: LiveServer
) -> None:
    tree.write_log(fixture_log(version))
    env = clean_env(
        **server_env(live_server.line_port),
        RENEWED_DOMAINS=" ".join(DE),
        RENEWED_LINEAGE=str(tree.config / "live" / "d.example"),
    )
    run = run_hook(tree.install_hook("deploy"), env)
    assert run.returncode == 0, run.stderr
    assert sorted(registered(live_server)) == DE
    assert "deploy:" in run.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_cli_hook_without_argument_tells_post_from_deploy_by_the_log(
    version: str, tree: CertbotTree, live_server: LiveServer, tmp_path: Path
) -> None:
    # Given as --post-hook/--deploy-hook with no argument and living outside renewal-hooks/,
    # with certbot 2.x's leaked RENEWED_* in a post hook: only the log tells the phase.
    hook = tmp_path / "bin" / "keychest-hook.sh"
    hook.parent.mkdir()
    hook.write_bytes(HOOK.read_bytes())
    env = clean_env(
        **server_env(live_server.line_port),
        RENEWED_DOMAINS=" ".join(DE),
        RENEWED_LINEAGE=str(tree.config / "live" / "d.example"),
    )
    log = fixture_log(version)
    last_deploy = log.rindex("Running deploy-hook command")
    tree.write_log(log[: log.index("\n", last_deploy) + 1])  # certbot is running a deploy hook

    run = run_hook(hook, env)
    assert "deploy:" in run.stderr
    assert sorted(registered(live_server)) == DE

    tree.write_log(log)  # the whole run: certbot is running its post hooks
    run = run_hook(hook, env)
    assert "post:" in run.stderr
    assert sorted(registered(live_server)) == sorted(ALL)
    # beside the hooks of the lineage's certbot, found through RENEWED_LINEAGE
    assert tree.state_file.exists()


def test_all_registers_every_managed_certificate(tree: CertbotTree, live_server: LiveServer) -> None:
    tree.add_lineage("w.example", ["w.example", "*.w.example"])
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(live_server.line_port)), "all")
    assert run.returncode == 0, run.stderr
    assert sorted(registered(live_server)) == sorted([*ALL, "w.example"])
    assert "skip *.w.example" in run.stderr


def test_all_says_when_there_is_no_renewal_folder(tmp_path: Path) -> None:
    tree = CertbotTree.create(tmp_path / "state")  # certbot's folders, but no certificate yet
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(free_port())), "all")
    assert run.returncode == 0
    assert f"no renewal folder {tree.config}/renewal" in run.stderr
    (tree.config / "renewal").mkdir()
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(free_port())), "all")
    assert f"no certificate in {tree.config}/renewal" in run.stderr


# ------------------------------------------------------------------ which email


def test_email_from_regr_json_of_older_certbot(tree: CertbotTree, live_server: LiveServer) -> None:
    regr = tree.config / "accounts" / "acme-v02.api.letsencrypt.org" / "directory" / "0123456789abcdef"
    regr.mkdir(parents=True)
    (regr / "regr.json").write_text(
        json.dumps({"body": {"contact": ["mailto:old-certbot@example.org"]}, "uri": "https://x/acct/1"})
    )
    tree.write_log(fixture_log("2.1.0"))
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(live_server.line_port)))
    assert run.returncode == 0
    assert set(registered(live_server).values()) == {"old-certbot@example.org"}


def test_email_from_arguments_when_no_mailto_logged(tree: CertbotTree, live_server: LiveServer) -> None:
    log_runs = runs(fixture_log("5.8.0"))
    text = log_runs[0] + log_runs[-1]
    tree.write_log("".join(line for line in text.splitlines(keepends=True) if "mailto:" not in line))
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(live_server.line_port)))
    assert "certbot arguments" in run.stderr
    assert set(registered(live_server).values()) == {"admin@example.org"}


def without_any_email(version: str) -> str:
    """The runs of an account registered with --register-unsafely-without-email."""
    text = re.sub(r"'-m', '[^']+', ", "", fixture_log(version))
    return "".join(line for line in text.splitlines(keepends=True) if "mailto:" not in line)


def test_placeholder_then_keychest_email_file_replaces_it(tree: CertbotTree, live_server: LiveServer) -> None:
    tree.write_log(without_any_email("5.8.0"))
    hook = tree.install_hook("post")
    env = clean_env(**server_env(live_server.line_port))

    run = run_hook(hook, env)
    assert run.returncode == 0, run.stderr
    (placeholder,) = set(registered(live_server).values())
    assert re.fullmatch(r"certbot-[0-9a-f]{16}@keychest\.test", placeholder), (
        placeholder
    )  # the server's domain
    assert [a["is_placeholder"] for a in cli_json(live_server, "accounts")] == [True]
    assert tree.state_values()["placeholder"] == placeholder

    run = run_hook(hook, env)  # no new placeholder and no new claim on a later run
    assert set(registered(live_server).values()) == {placeholder}
    assert "claimed" not in run.stderr

    (tree.hooks_dir / "keychest_email").write_text("# who gets the alerts\nops@example.org\n")
    run = run_hook(hook, env)
    assert "claimed key" in run.stderr and "keychest_email" in run.stderr
    assert set(registered(live_server).values()) == {"ops@example.org"}
    assert len(cli_json(live_server, "keys")) == 1  # one key throughout


def test_setting_wins_over_everything(tree: CertbotTree, live_server: LiveServer) -> None:
    tree.write_log(fixture_log("2.1.0"))
    (tree.hooks_dir / "keychest_email").write_text("file@example.org\n")
    env = clean_env(**server_env(live_server.line_port), KEYCHEST_EMAIL="setting@example.org")
    run = run_hook(tree.install_hook("post"), env)
    assert run.returncode == 0
    assert set(registered(live_server).values()) == {"setting@example.org"}


# ------------------------------------------------------------------ state, spool, time-outs


def test_key_is_reused_and_a_second_run_adds_nothing_new(tree: CertbotTree, live_server: LiveServer) -> None:
    tree.write_log(fixture_log("5.8.0"))
    hook = tree.install_hook("post")
    env = post_env(tree, "5.8.0", live_server)
    first = run_hook(hook, env)
    before = domains(live_server)
    second = run_hook(hook, env)
    assert first.returncode == second.returncode == 0
    assert domains(live_server) == before and len(before) == len(ALL)
    assert len(cli_json(live_server, "keys")) == 1
    assert "got API key" in first.stderr and "got API key" not in second.stderr


@pytest.mark.parametrize("claimed", ["", "email=admin@example.org\n"])
def test_a_key_the_server_forgot_is_replaced(
    claimed: str, tree: CertbotTree, live_server: LiveServer
) -> None:
    # 401 on the claim (email changed) or, with the claim already done, on the first add
    tree.write_log(fixture_log("2.1.0"))
    tree.state_file.write_text(
        f"server=127.0.0.1:{live_server.line_port}\napikey=notaknownkey\nclaim=ok\n{claimed}"
    )
    run = run_hook(tree.install_hook("post"), clean_env(**server_env(live_server.line_port)))
    assert run.returncode == 0, run.stderr
    assert sorted(registered(live_server)) == sorted(ALL)
    assert tree.state_values()["apikey"] != "notaknownkey"


def test_server_down_spools_then_delivers_once(tree: CertbotTree, live_server: LiveServer) -> None:
    tree.write_log(fixture_log("2.1.0"))
    hook = tree.install_hook("post")
    env = post_env(tree, "2.1.0", live_server)
    live_server.stop()

    down = run_hook(hook, env)
    assert down.returncode == 0
    assert down.seconds < HOOK_DEADLINE_S
    assert sorted(tree.spooled()) == sorted(ALL)
    assert "cannot connect" in down.stderr

    live_server.start()
    # the next run is a deploy of d's lineage only: the spool brings the rest, each name once
    env = clean_env(**server_env(live_server.line_port), RENEWED_DOMAINS=" ".join(DE))
    up = run_hook(tree.install_hook("deploy"), env)
    assert up.returncode == 0, up.stderr
    assert sorted(registered(live_server)) == sorted(ALL)
    assert not tree.spool_file.exists()
    assert all(up.stderr.count(f"added {name}:") == 1 for name in ALL)
    log_file = tree.logs / "keychest-hook.log"
    assert "spooled 5 domain(s)" in log_file.read_text()


@pytest.mark.slow  # waits out the hook's read time-out
def test_silent_server_read_times_out(tree: CertbotTree, tmp_path: Path) -> None:
    tree.write_log(fixture_log("5.8.0"))
    with silent_server() as port:
        run = run_hook(tree.install_hook("post"), clean_env(**server_env(port)))
    assert run.returncode == 0
    assert run.seconds < HOOK_DEADLINE_S
    assert "no answer to 'command apikey'" in run.stderr
    assert sorted(tree.spooled()) == sorted(ALL)
    assert "Terminated" not in run.stderr


@pytest.mark.slow  # waits out the hook's connect time-out
def test_dropped_connect_times_out(tree: CertbotTree) -> None:
    tree.write_log(fixture_log("5.8.0"))
    with dropping_server() as port:
        run = run_hook(tree.install_hook("post"), clean_env(**server_env(port)))
    assert run.returncode == 0
    assert run.seconds < HOOK_DEADLINE_S
    assert "timed out" in run.stderr
    assert sorted(tree.spooled()) == sorted(ALL)
    assert "Terminated" not in run.stderr


def test_never_fails_certbot(tree: CertbotTree, tmp_path: Path) -> None:
    # nonsense settings, an unwritable state file, no log at all: still exit 0, and quickly
    env = clean_env(
        KEYCHEST_SERVER="no such host",
        KEYCHEST_PORT="x",
        KEYCHEST_STATE_FILE="/proc/keychest/state",
        KEYCHEST_CERTBOT_LOGS=str(tmp_path / "nowhere"),
        RENEWED_DOMAINS="bad..name -x ok.example",
    )
    run = run_hook(tree.install_hook("deploy"), env)
    assert run.returncode == 0
    assert run.seconds < HOOK_DEADLINE_S


def test_pre_hook_does_nothing(tree: CertbotTree) -> None:
    tree.write_log(fixture_log("2.1.0"))
    run = run_hook(tree.install_hook("pre"), clean_env(**server_env(free_port())))
    assert run.returncode == 0 and "pre:" in run.stderr
    assert not tree.spool_file.exists() and not tree.state_file.exists()


def test_certbot_dirs_come_from_certbots_command_line(tree: CertbotTree, live_server: LiveServer) -> None:
    # A hook outside renewal-hooks/, no RENEWED_LINEAGE, non-default dirs: only the parent
    # certbot's --config-dir/--logs-dir (read from /proc) lead to the log and the state.
    tree.write_log(fixture_log("5.8.0"))
    bin_dir = tree.state / "bin"
    bin_dir.mkdir()
    hook = bin_dir / "keychest-hook.sh"
    hook.write_bytes(HOOK.read_bytes())
    fake_certbot = bin_dir / "certbot"  # runs its hook as certbot does: a child process
    fake_certbot.write_text(f"#!/bin/bash\nbash {hook} post\n")
    fake_certbot.chmod(0o755)
    args = [str(fake_certbot), "--config-dir", str(tree.config), f"--logs-dir={tree.logs}", "renew"]
    proc = subprocess.run(
        args, env=clean_env(**server_env(live_server.line_port)), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(registered(live_server)) == sorted(ALL)
    assert tree.state_file.exists() and (tree.logs / "keychest-hook.log").exists()
