"""The `keychest` command: one entry point; each sub-command lives in its own module."""

from __future__ import annotations

import importlib

import click

from keychest import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="keychest")
def main() -> None:
    """Self-hosted TLS certificate monitoring that any server joins with nothing but bash."""


# Sub-commands whose modules may not all exist yet in a partial checkout are skipped,
# so that one missing piece never takes the whole command down.
_COMMANDS = {
    "keychest.cli.serve": ["serve"],
    "keychest.cli.admin": ["domains_cmd", "keys_cmd", "accounts_cmd", "outbox_cmd"],
    "keychest.cli.client": ["client"],
    "keychest.cli.scan": ["scan"],
    "keychest.cli.hook": ["hook"],
    "keychest.cli.report": ["report"],
}

for _module, _names in _COMMANDS.items():
    try:
        _mod = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise
        continue
    for _name in _names:
        if hasattr(_mod, _name):
            main.add_command(getattr(_mod, _name))
