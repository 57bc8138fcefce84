"""Query bodies and the HTTP layer: auth, routing to the owner, reach summed over workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from devtools.devbroker import free_port
from schemas.broadcast import BroadcastSpec
from schemas.state import PageState, UserState
from services.window.processing import partition_for
from services.window.queries import reach_view, user_view
from services.window.store import StoredUser
from services.window.web import HOP_HEADER, SERVED_BY_HEADER, QueryApi
from tests.unit.builders import PAGE, T0, USER, H, message, otn
from windowgate.core.fold import fold
from windowgate.core.rulebook import load_rules

RULES = load_rules()
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PARTITIONS = 4


def opened(user: str = USER) -> UserState:
    state = fold(UserState(page_id=PAGE, user_id=user), message(T0, user_id=user))
    return fold(state, otn(T0 + 1))


# ---- bodies -------------------------------------------------------------------------------------


def test_the_user_view_is_the_state_and_every_verdict_of_assess() -> None:
    view = user_view(PAGE, USER, StoredUser(opened(), 3), None, T0 + H, RULES)
    assert view["known"] is True
    assert view["state"]["last_opener_at"] == T0
    by_mechanism = {(m["mechanism"], m["topic"]): m for m in view["mechanisms"]}
    window = by_mechanism[("RESPONSE", None)]
    assert window["usable"] is True
    assert window["until_ms"] == T0 + 24 * H
    assert window["until"] == "2026-05-05T09:00:00Z"
    assert window["why_not"] is None
    assert by_mechanism[("OTN", "restock")]["usable"] is True
    human = by_mechanism[("HUMAN_AGENT", None)]
    assert (human["usable"], human["reason"]) == (False, "human_agent_not_permitted")
    assert human["why_not"] == human["detail"]


def test_an_unknown_user_is_answered_not_missing() -> None:
    view = user_view(PAGE, "nobody", None, None, T0, RULES)
    assert view["known"] is False
    assert view["state"]["user_id"] == "nobody"
    window = next(m for m in view["mechanisms"] if m["mechanism"] == "RESPONSE")
    assert (window["usable"], window["reason"]) == (False, "window_closed")


def test_a_blocked_page_refuses_every_mechanism() -> None:
    page = PageState(page_id=PAGE, blocked_at=T0, block_reason="policy")
    view = user_view(PAGE, USER, StoredUser(opened()), page, T0 + H, RULES)
    assert [(m["usable"], m["reason"]) for m in view["mechanisms"]] == [(False, "page_restricted")]
    assert view["page"]["restricted"] is True


def test_the_reach_view_sums_partitions_and_says_what_is_missing() -> None:
    partials = {
        0: {"users": 3, "users:RESPONSE": 2, "otn_users:restock": 1, "otn_tokens:restock": 2},
        2: {"users": 1, "users:RESPONSE": 1, "tokens:OTN": 2, "tokens_after_7d:OTN": 1},
    }
    view = reach_view(PAGE, partials, 4, None, T0)
    assert view["users"] == 4
    assert view["reachable_now"] == {"RESPONSE": 3}
    assert view["otn_topics"] == {"restock": {"users": 1, "tokens": 2}}
    assert view["tokens_expiring_within_7d"] == {"OTN": 1}
    assert (view["complete"], view["partitions"]) == (False, {"counted": [0, 2], "missing": [1, 3]})
    blocked = PageState(page_id=PAGE, blocked_at=T0)
    view = reach_view(PAGE, partials, 4, blocked, T0)
    assert view["reachable_now"] == {}
    assert view["reachable_if_unblocked"] == {"RESPONSE": 3}


# ---- HTTP ---------------------------------------------------------------------------------------


class FakeWorker:
    """A `Backend` with its own users; ownership is whatever the test says."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.owners: dict[int, str] = {}
        self.users: dict[str, StoredUser] = {}
        self.counts: dict[int, dict[str, int]] = {}
        self.why_not: str | None = None

    @property
    def self_url(self) -> str:
        return self.url

    @property
    def partitions(self) -> int:
        return PARTITIONS

    def ready(self) -> str | None:
        return self.why_not

    def owner_of(self, key: bytes) -> str | None:
        return self.owners.get(partition_for(key, PARTITIONS))

    def partition_owners(self) -> Mapping[int, str]:
        return self.owners

    def user_view(self, page_id: str, user_id: str) -> dict[str, Any]:
        stored = self.users.get(f"{page_id}:{user_id}")
        return user_view(page_id, user_id, stored, None, T0 + H, RULES)

    def reach_partials(self, page_id: str) -> dict[int, dict[str, int]]:
        return self.counts

    def page_state(self, page_id: str) -> PageState | None:
        return None

    def reach_view(
        self, page_id: str, partials: Mapping[int, Mapping[str, int]], errors: Mapping[str, str]
    ) -> dict[str, Any]:
        return reach_view(page_id, partials, PARTITIONS, None, T0, errors)

    def metrics(self) -> tuple[bytes, str]:
        return b"window_records_total 0\n", "text/plain; version=0.0.4"

    def dry_run_partials(self, spec: BroadcastSpec) -> dict[str, Any]:
        """Each owned partition: 10 users, 7 by OTN, 3 refused."""
        mine = sorted(p for p, url in self.owners.items() if url == self.url)
        n = len(mine)
        return {
            "audience": 10 * n,
            "by_mechanism": {"OTN": 7 * n} if n else {},
            "refused": {"token_expired": 3 * n} if n else {},
            "partitions": mine,
        }


class Cluster:
    def __init__(self) -> None:
        self.a = FakeWorker(free_port())
        self.b = FakeWorker(free_port())
        self.servers: list[TestServer] = []
        self.session = aiohttp.ClientSession()

    async def start(self) -> None:
        for worker in (self.a, self.b):
            server = TestServer(QueryApi(worker, (TOKEN,)).application(), port=worker.port)
            await server.start_server()
            self.servers.append(server)

    def own(self, owners: dict[int, FakeWorker]) -> None:
        for worker in (self.a, self.b):
            worker.owners = {p: w.url for p, w in owners.items()}

    async def get(self, worker: FakeWorker, path: str, **headers: str) -> aiohttp.ClientResponse:
        response = await self.session.get(f"{worker.url}{path}", headers={**AUTH, **headers})
        await response.read()
        return response

    async def close(self) -> None:
        await self.session.close()
        for server in self.servers:
            await server.close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    await cluster.start()
    yield cluster
    await cluster.close()


USER_PATH = f"/v1/pages/{PAGE}/users/{USER}"
OWNER_PARTITION = partition_for(f"{PAGE}:{USER}".encode(), PARTITIONS)


async def test_v1_needs_the_bearer_token_and_healthz_does_not(cluster: Cluster) -> None:
    async with cluster.session.get(f"{cluster.a.url}{USER_PATH}") as answer:
        assert answer.status == 401
    async with cluster.session.get(
        f"{cluster.a.url}{USER_PATH}", headers={"Authorization": "Bearer nope"}
    ) as answer:
        assert answer.status == 401
    async with cluster.session.get(f"{cluster.a.url}/healthz") as answer:
        assert answer.status == 200
        assert (await answer.json())["status"] == "ok"
    async with cluster.session.get(f"{cluster.a.url}/metrics") as answer:
        assert b"window_records_total" in await answer.read()


async def test_the_owner_answers_itself(cluster: Cluster) -> None:
    cluster.own({p: cluster.a for p in range(PARTITIONS)})
    cluster.a.users[f"{PAGE}:{USER}"] = StoredUser(opened())
    answer = await cluster.get(cluster.a, USER_PATH)
    assert answer.status == 200
    assert answer.headers[SERVED_BY_HEADER] == cluster.a.url
    assert (await answer.json())["known"] is True


async def test_a_worker_forwards_to_the_owner_and_relays_its_answer(cluster: Cluster) -> None:
    cluster.own({p: cluster.b for p in range(PARTITIONS)})
    cluster.b.users[f"{PAGE}:{USER}"] = StoredUser(opened())
    answer = await cluster.get(cluster.a, USER_PATH)
    assert answer.status == 200
    assert answer.headers[SERVED_BY_HEADER] == cluster.b.url
    body = await answer.json()
    assert (body["known"], body["state"]["last_opener_at"]) == (True, T0)


async def test_a_forwarded_request_is_never_forwarded_again(cluster: Cluster) -> None:
    cluster.a.owners = {p: cluster.b.url for p in range(PARTITIONS)}
    cluster.b.owners = {p: cluster.a.url for p in range(PARTITIONS)}  # they disagree: moving
    answer = await cluster.get(cluster.a, USER_PATH)
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "1"
    assert "no longer owns" in (await answer.json())["detail"]


async def test_no_owner_or_an_unreachable_owner_is_a_503(cluster: Cluster) -> None:
    cluster.own({})
    assert (await cluster.get(cluster.a, USER_PATH)).status == 503
    gone = f"http://127.0.0.1:{free_port()}"
    cluster.a.owners = {OWNER_PARTITION: gone}
    answer = await cluster.get(cluster.a, USER_PATH)
    assert answer.status == 503
    assert gone in (await answer.json())["detail"]


async def test_a_worker_that_is_recovering_says_so(cluster: Cluster) -> None:
    cluster.own({p: cluster.a for p in range(PARTITIONS)})
    cluster.a.why_not = "this worker is recovering its tables"
    answer = await cluster.get(cluster.a, USER_PATH)
    assert answer.status == 503
    assert (await answer.json())["detail"] == "this worker is recovering its tables"
    async with cluster.session.get(f"{cluster.a.url}/healthz") as health:
        assert health.status == 503


async def test_reach_sums_what_each_owner_reports_for_its_own_partitions(cluster: Cluster) -> None:
    cluster.own({0: cluster.a, 1: cluster.a, 2: cluster.b, 3: cluster.b})
    cluster.a.counts = {0: {"users": 2, "users:RESPONSE": 1}, 1: {"users": 1}}
    cluster.b.counts = {
        2: {"users": 5, "users:RESPONSE": 4},
        3: {"users": 1},
        1: {"users": 100},  # stale: B no longer owns 1, and must not be counted for it
    }
    answer = await cluster.get(cluster.a, f"/v1/pages/{PAGE}/reach")
    body = await answer.json()
    assert answer.status == 200
    assert (body["users"], body["reachable_now"]) == (9, {"RESPONSE": 5})
    assert body["complete"] is True


async def test_reach_is_marked_incomplete_when_an_owner_is_missing(cluster: Cluster) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    cluster.a.owners = {0: cluster.a.url, 1: gone}
    cluster.a.counts = {0: {"users": 2}}
    body = await (await cluster.get(cluster.a, f"/v1/pages/{PAGE}/reach")).json()
    assert body["users"] == 2
    assert body["complete"] is False
    assert body["partitions"]["missing"] == [1, 2, 3]
    assert gone in body["errors"]


async def test_the_internal_reach_endpoint_needs_the_token_too(cluster: Cluster) -> None:
    async with cluster.session.get(
        f"{cluster.a.url}/v1/internal/pages/{PAGE}/reach", headers={HOP_HEADER: "x"}
    ) as answer:
        assert answer.status == 401


# ---- the broadcasts' dry run, over every worker ------------------------------------------------

DRY_RUN = "/v1/internal/broadcasts/dry-run"
SPEC = {
    "broadcast_id": "b1",
    "page_id": PAGE,
    "message": {"text": "back in stock"},
    "audience": {"topic": "restock"},
    "dry_run": True,
}


async def test_a_dry_run_sums_every_workers_partitions(cluster: Cluster) -> None:
    cluster.own({0: cluster.a, 1: cluster.b, 2: cluster.b, 3: cluster.a})
    async with cluster.session.post(f"{cluster.a.url}{DRY_RUN}", json=SPEC, headers=AUTH) as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body["audience"] == 40 and body["by_mechanism"] == {"OTN": 28}
    assert body["refused"] == {"token_expired": 12}
    assert body["complete"] is True and body["missing_partitions"] == []


async def test_a_dry_run_names_the_partitions_nobody_answered_for(cluster: Cluster) -> None:
    cluster.own({0: cluster.a, 1: cluster.b, 2: cluster.b, 3: cluster.a})
    cluster.b.why_not = "this worker is restoring partitions [1, 2]"
    async with cluster.session.post(f"{cluster.a.url}{DRY_RUN}", json=SPEC, headers=AUTH) as answer:
        body = await answer.json()
    assert body["audience"] == 20 and body["complete"] is False
    assert body["missing_partitions"] == [1, 2] and cluster.b.url in body["errors"]


async def test_a_bad_dry_run_body_is_a_400_naming_the_field(cluster: Cluster) -> None:
    cluster.own({p: cluster.a for p in range(PARTITIONS)})
    bad = {**SPEC, "audience": {"topik": "restock"}}
    async with cluster.session.post(f"{cluster.a.url}{DRY_RUN}", json=bad, headers=AUTH) as answer:
        assert answer.status == 400
        body = await answer.json()
    assert body["field"] == "audience.topik"
    async with cluster.session.post(f"{cluster.a.url}{DRY_RUN}", data=b"{", headers=AUTH) as answer:
        assert answer.status == 400
