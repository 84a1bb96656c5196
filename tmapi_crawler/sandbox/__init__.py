"""A local stand-in for tmapi's "Get Category Products V2" API.

The demo, the tests and the benchmarks need an API that behaves like the real one — same
parameters, same answers, same failure modes — but is free, fast, deterministic and can be told
to misbehave on purpose. `words` and `items` write the products, `catalog` makes and queries
them, `config` holds the settings and validates requests, `pages` builds an answer's page,
`misbehaviour` its careless variants, `server` answers HTTP, `process` runs it as a child
process.
"""
