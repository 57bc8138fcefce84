"""The HTTP front: the /v1 API and the drop-in Graph proxy (Meta's shapes live in windowgate.meta).

api         the routes: /v1/messages, /v1/decisions/{id}, labels, broadcasts, proxy, /metrics
proxy_http  the proxy's HTTP side: Meta's body in any of its shapes, uploads, Graph's limits
labels      PUT / DELETE a user's label: an event in the log
broadcasts  POST /v1/broadcasts and friends: commands to every window partition, status summed
feeds       what the front reads back: delivery outcomes and the OTN token / comment owners
"""
