"""Whether the runs of a comparison ran in the same environment (``manifest.json``'s ``environments``)."""

from __future__ import annotations

from clight.compare.record import RunRecord, read_manifest
from clight.environment import differences, summary
from clight.shorten import short_repr

_MAX_LISTED = 6


def environment_warnings(records: list[RunRecord]) -> list[str]:
    """One line per run whose environment differs, in what may change results, from the first run's
    (or that was resumed in another environment than it started in); none when all agree."""
    environments = {r.name: (read_manifest(r.run_dir) or {}).get("environments") or [] for r in records}
    first = records[0].name
    lines = []
    for r in records:
        envs = environments[r.name]
        if not envs:
            lines.append(f"{r.name}: no environment recorded (a run folder written before clight recorded it)")
            continue
        reference = (environments[first] or [None])[0]
        if r.name != first and reference is not None and differences(reference, envs[0]):
            lines.append(f"{r.name} ran in another environment than {first}: {_listed(differences(reference, envs[0]))}")
        for later in envs[1:]:
            lines.append(
                f"{r.name} was resumed in another environment than it started in: {_listed(differences(envs[0], later))}"
            )
    return lines


def _listed(diffs: dict) -> str:
    shown = [f"{key} {short_repr(a)} vs {short_repr(b)}" for key, (a, b) in list(diffs.items())[:_MAX_LISTED]]
    return "; ".join(shown) + (f"; and {len(diffs) - _MAX_LISTED} more" if len(diffs) > _MAX_LISTED else "")


def environment_notes(records: list[RunRecord]) -> tuple[list[str], list[str]]:
    """The comparison's note on environments (the one every run shares, or a warning per run that
    differs) and the warnings alone."""
    warnings = environment_warnings(records)
    if warnings:
        return [f"Warning: {w}. Numbers may differ for this reason alone (docs/reproducibility.md)." for w in warnings], warnings
    env = ((read_manifest(records[0].run_dir) or {}).get("environments") or [{}])[0]
    return [f"Environment (every run): {summary(env)}."], []
