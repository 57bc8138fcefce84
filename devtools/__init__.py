"""Development tools, not shipped in the package: the broker from Maven jars, `make run`, the
offline demo, the Graph stand-in and the window test harness."""
