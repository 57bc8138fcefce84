"""Meta's formats, in one place: what comes in and what goes out (pure).

normalise     webhook bodies → events (inbound)
send_api      a decision → the Graph Send API call per mechanism (outbound)
graph_errors  Graph's error answers → what to do with the token and the request (outbound)
proxy         Meta's Send API body ↔ a SendRequest, and Graph-shaped answers for the proxy
"""
