"""ingest: Meta's Messenger / Instagram webhooks → the events topic (DESIGN §4.3, I7).

`python -m services.ingest` runs it; `create_app` (app.py) builds it around a `Publisher`
(publisher.py); settings and demo credentials are in config.py.
"""
