"""Scan results -> JSON objects, table rows, and a monitoring-plugin exit status."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keychest.scan.judge import CertFacts, State
from keychest.scan.model import AddressResult
from keychest.scan.protocols import DEFAULT_PROTOCOL

if TYPE_CHECKING:
    from rich.table import Table

_STATE_STYLES = {State.OK: "green", State.WARNING: "yellow", State.CRITICAL: "bold red", State.ERROR: "red"}


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _chain_element(facts: CertFacts) -> dict[str, Any]:
    return {
        "subject": facts.subject,
        "issuer": facts.issuer,
        "not_before": iso_utc(facts.not_before),
        "not_after": iso_utc(facts.not_after),
        "sha256": facts.sha256,
        "key_type": facts.key_type,
        "key_bits": facts.key_bits,
        "signature_algorithm": facts.signature_algorithm,
    }


def result_to_json(result: AddressResult) -> dict[str, Any]:
    """One (target, address) as a JSON-ready dict; certificate fields are null on errors."""
    leaf = result.leaf
    verdict = result.verdict
    return {
        "host": result.endpoint.host,
        "port": result.endpoint.port,
        "protocol": result.endpoint.protocol,
        "ip": result.ip,
        "state": result.state.value,
        "error": str(result.error) if result.error else None,
        "error_kind": result.error.kind.value if result.error else None,
        "sha256": leaf.sha256 if leaf else None,
        "subject": leaf.subject if leaf else None,
        "serial": leaf.serial if leaf else None,
        "not_before": iso_utc(leaf.not_before) if leaf else None,
        "not_after": iso_utc(leaf.not_after) if leaf else None,
        "days_left": verdict.days_left if verdict else None,
        "earliest_not_after": iso_utc(verdict.earliest_not_after)
        if verdict and verdict.earliest_not_after
        else None,
        "earliest_days_left": verdict.earliest_days_left if verdict else None,
        "trusted": verdict.trusted if verdict else None,
        "trust_error": verdict.trust_error if verdict else None,
        "hostname_ok": verdict.hostname_ok if verdict else None,
        "issuer": leaf.issuer if leaf else None,
        "issuer_organization": leaf.issuer_organization if leaf else None,
        "is_lets_encrypt": leaf.is_lets_encrypt if leaf else None,
        "self_signed": leaf.self_signed if leaf else None,
        "subject_alt_names": list(leaf.subject_alt_names) if leaf else None,
        "chain": [_chain_element(c) for c in result.chain],
        "trust_anchor": verdict.path[-1].subject if verdict and verdict.path else None,
        "key_type": leaf.key_type if leaf else None,
        "key_bits": leaf.key_bits if leaf else None,
        "key_curve": leaf.key_curve if leaf else None,
        "signature_algorithm": leaf.signature_algorithm if leaf else None,
        "tls_version": result.tls_version,
        "cipher": result.cipher,
        "problems": [p.as_dict() for p in verdict.problems] if verdict else [],
        "registration_expires": iso_utc(result.registration_expires) if result.registration_expires else None,
        "revocation": result.revocation.as_dict() if result.revocation else None,
        "ari": result.ari.as_dict() if result.ari else None,
        "scanned_at": iso_utc(result.scanned_at),
        "elapsed_ms": round(result.elapsed * 1000, 1),
    }


def results_to_json(results: Iterable[AddressResult]) -> list[dict[str, Any]]:
    return [result_to_json(r) for r in results]


def exit_status(results: Iterable[AddressResult]) -> int:
    """0 all ok, 1 some warning, 2 some critical or error (no results at all is an error)."""
    states = [r.state for r in results]
    if not states:
        return 2
    return max(state.exit_status for state in states)


def _details(result: AddressResult) -> str:
    if result.error is not None:
        return f"{result.error.kind.value}: {result.error.message}"
    assert result.verdict is not None
    return "; ".join(p.message for p in result.verdict.problems)


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


def _target(result: AddressResult) -> str:
    endpoint = result.endpoint
    if endpoint.protocol == DEFAULT_PROTOCOL:
        return endpoint.host_port
    return f"{endpoint.protocol}://{endpoint.host_port}"


def table_rows(results: Sequence[AddressResult]) -> list[list[str]]:
    """Plain-text rows (no styling), the same columns as `render_table`."""
    rows = []
    for r in results:
        leaf, verdict = r.leaf, r.verdict
        rows.append(
            [
                _target(r),
                r.ip or "-",
                r.state.value.upper(),
                str(verdict.days_left) if verdict else "",
                f"{leaf.not_after:%Y-%m-%d}" if leaf else "",
                leaf.issuer_name if leaf else "",
                _yes_no(verdict.trusted if verdict else None),
                _yes_no(verdict.hostname_ok if verdict else None),
                _details(r),
            ]
        )
    return rows


TABLE_COLUMNS = ("Target", "Address", "State", "Days", "Expires", "Issuer", "Trusted", "Name", "Details")


def render_table(results: Sequence[AddressResult]) -> Table:
    # rich is imported only here: JSON output and the scheduler never need it.
    from rich.table import Table
    from rich.text import Text

    table = Table(show_lines=False, header_style="bold")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="right" if column == "Days" else "left", overflow="fold")
    for result, row in zip(results, table_rows(results), strict=True):
        style = _STATE_STYLES[result.state]
        table.add_row(*row[:2], Text(row[2], style=style), *row[3:])
    return table
