"""An HTTP client session opened on first use (inside the running loop) and closed once."""

from __future__ import annotations

import aiohttp


class LazySession:
    """Holds one aiohttp session for a client that may never be used (the dry run, uploads)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
