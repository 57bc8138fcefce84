"""The HTTP front: the /v1 API and the drop-in Graph proxy (Meta's shapes live in windowgate.meta).

api     the routes: POST /v1/messages, GET /v1/decisions/{id}, the proxy routes, /metrics
feeds   what the front reads back: delivery outcomes and the OTN token owners
"""
