"""The Kafka topic names: part of the wire contract, next to the records they carry."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str = "windowgate."

    @property
    def events(self) -> str:
        return f"{self.prefix}events"

    @property
    def send_requests(self) -> str:
        return f"{self.prefix}send-requests"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}decisions"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}dead-letter"

    @property
    def broadcast_commands(self) -> str:
        """Co-partitioned with the keyed topics: each command is written to every partition."""
        return f"{self.prefix}broadcast-commands"

    @property
    def broadcasts(self) -> str:
        """Compacted: each window partition's progress on each broadcast (`BroadcastProgress`)."""
        return f"{self.prefix}broadcasts"

    @property
    def keyed(self) -> tuple[str, ...]:
        return (self.events, self.send_requests, self.decisions)
