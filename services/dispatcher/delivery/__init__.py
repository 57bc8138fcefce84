"""Delivery: the window's decisions → the Graph Send API, every token and request_id at most once.

worker        the per-partition protocol: decisions in, dispatch log (attempt / done), events out
dispatchlog   the dispatch log's records, and reading one partition back
graph         one HTTP call to Graph, and the retry policy around a delivery
outcome       settled request → events + done (pure)
ratelimit     per-page limits
"""
