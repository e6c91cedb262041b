"""`mindsmirror repair`: move unreadable Parquet parts aside and say what the store now lacks."""

from __future__ import annotations

from dataclasses import dataclass

from storage import Store, queries


@dataclass(frozen=True)
class Repair:
    quarantined: tuple[tuple[str, str], ...]  # (part, why it cannot be read)
    moved_to: tuple[str, ...]
    missing: tuple[queries.MissingRequest, ...]  # answered requests whose samples are gone

    def describe(self, limit: int = 10) -> str:
        if not self.quarantined:
            lines = ["no corrupt Parquet parts"]
        else:
            lines = [f"moved {len(self.quarantined)} corrupt Parquet part(s) to quarantine:"]
            lines += [f"  {part} ({reason}) -> {moved}"
                      for (part, reason), moved in zip(self.quarantined, self.moved_to)]
        if not self.missing:
            lines.append("no answered request is missing samples")
            return "\n".join(lines)
        samples = sum(request.missing for request in self.missing)
        lines.append(f"{len(self.missing)} answered request(s) now miss {samples} sample(s); "
                     "`mindsmirror generate CONFIG` buys just those again:")
        lines += [f"  {request.kind} of {request.example_id}: {request.missing} of {request.asked} samples"
                  for request in self.missing[:limit]]
        if len(self.missing) > limit:
            lines.append(f"  ... and {len(self.missing) - limit} more")
        return "\n".join(lines)


def repair_store(store: Store) -> Repair:
    """Read every part whole; move those that fail to <store>/_quarantine/; list what is now missing.

    Requests are known from the `calls` table, so samples of a quarantined calls part cannot be
    listed, but generate plans from the dataset and the stored samples and buys them all the same."""
    corrupt = store.corrupt_files(thorough=True)
    moved = store.quarantine([path for path, _ in corrupt])
    return Repair(tuple(corrupt), tuple(moved), tuple(queries.answered_but_missing(store)))
