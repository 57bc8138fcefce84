"""The window worker: the single writer of per-user state, which also decides send requests.

A faust-streaming app (`app`) whose two agents loop over plain functions (`processing`):
`<prefix>events` records are folded into the `users` table (and page-wide ones into the `pages`
GlobalTable); `<prefix>send-requests` records are decided against that state, the decision is
folded back (reserving its token) and published to `<prefix>decisions`, and recorded as a
`RequestDecided` event in `<prefix>events`, so that the events topic alone rebuilds the table
(`replay`, I8). Both keyed topics and the table's changelog are co-partitioned, so the worker
that owns a partition is the only process that changes its users (I1).

Queries (`web`, `queries`) answer from the owner's table, forwarded there by any worker; reach
counts come from incrementally kept aggregates (`reach`).

    python -m services.window worker
    python -m services.window replay [--compare]
"""
