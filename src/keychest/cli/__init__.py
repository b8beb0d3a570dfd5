"""The `keychest` command: one entry point; each sub-command lives in its own module.

Sub-commands are imported only when they run: `keychest scan` in a cron job should not pay
for SQLAlchemy and FastAPI. A sub-command module that fails to import fails loudly.
"""

from __future__ import annotations

import importlib

import click

from keychest import __version__

# command name -> (module, attribute)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("keychest.cli.serve", "serve"),
    "client": ("keychest.cli.client", "client"),
    "scan": ("keychest.cli.scan", "scan"),
    "hook": ("keychest.cli.hook", "hook"),
    "report": ("keychest.cli.report", "report"),
    "domains": ("keychest.cli.admin", "domains_cmd"),
    "keys": ("keychest.cli.admin", "keys_cmd"),
    "accounts": ("keychest.cli.admin", "accounts_cmd"),
    "outbox": ("keychest.cli.admin", "outbox_cmd"),
    "rescan": ("keychest.cli.rescan", "rescan"),
    "migrate": ("keychest.cli.migrate", "migrate"),
    "signin-link": ("keychest.cli.signin_link", "signin_link"),
    "notify": ("keychest.cli.notify", "notify_cmd"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name]
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}.{attribute} is not a click command")
        return command


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="keychest")
def main() -> None:
    """Self-hosted TLS certificate monitoring that any server joins with nothing but bash."""
