"""The dispatcher: two jobs in two folders, started together or apart by DISPATCHER_ROLE.

delivery/     decisions → Graph, exactly once (the partition protocol, the dispatch log, calls)
front/        the /v1 HTTP API and the drop-in Graph proxy
credentials   the page access tokens: only the dispatcher loads them
service, config, metrics, __main__   wiring, settings, Prometheus counters, the entry point
"""
