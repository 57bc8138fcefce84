"""`make chaos`: the whole gateway as a black box of processes, under faults, then checked.

    python -m bench.chaos [--seconds N] [--seed S] [--out bench/results/chaos-<date>.json]

Its own Kafka broker (devbroker jars, free ports, killed and restarted on its data dir), ingest,
two window workers, two dispatchers and a Graph stand-in, all on loopback, a unique topic prefix.
Signed Meta-shaped webhooks and `POST /v1/messages` requests flow while services are killed -9 and
restarted, the broker is crashed, window workers are frozen (SIGSTOP) past their session timeout
(in steady traffic and right after the broker returns) and one restarts on a stale data dir. Then
the run settles (bounded) and counts what must be 0: accepted webhooks lost, requests without
exactly one decision, tokens and request ids in more than one Graph call, Graph calls the rules
forbid, and `windowgate replay --compare` differences. Exit 0 when all are 0, else 1.
"""
