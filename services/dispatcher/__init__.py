"""The dispatcher: delivers the window's decisions through the Graph Send API, spending every
token and every request_id at most once, and serves the HTTP API and the drop-in Graph proxy.

    worker        the protocol: decisions in, dispatch log (attempt / done), outcome events out
    dispatchlog   the dispatch log's records, and reading one partition back
    graph         one HTTP call to Graph, and the retry policy around a delivery
    graph_request the call per mechanism (pure)       graph_errors  answers → actions (pure, data)
    outcome       settled request → events + done (pure)
    ratelimit     per-page limits                     proxy  Meta's body ↔ windowgate (pure)
    api, feeds    HTTP API, proxy, and what they read  service, config, metrics, __main__
"""
