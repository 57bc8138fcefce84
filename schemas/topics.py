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
    def keyed(self) -> tuple[str, ...]:
        return (self.events, self.send_requests, self.decisions)
