"""The window worker: the single writer of per-user state, which also decides send requests.

A fenced transactional processor (`worker`, on `services.common.partitioned`) that applies plain
functions (`processing`) to each partition (`partition`): `<prefix>events` records are folded into
the users' state (and page-wide ones into the pages' state); `<prefix>send-requests` records are
decided against that state, the decision is
folded back (reserving its token) and published to `<prefix>decisions`, and recorded as a
`RequestDecided` event in `<prefix>events`, so that the events topic alone rebuilds the table
(`replay`, I8). Both keyed topics and the changelogs are co-partitioned, and each partition's
outputs, state changes and input offsets are one Kafka transaction of a producer that fences every
earlier owner, so exactly one process can change a user's state (I1).

Queries (`web`, `queries`) answer from the owner's table, forwarded there by any worker; reach
counts come from incrementally kept aggregates (`reach`).

    python -m services.window worker
    python -m services.window replay [--compare]
"""
