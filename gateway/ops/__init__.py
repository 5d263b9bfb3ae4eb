"""Operations: metrics, structured logs, the silence alarm and retention housekeeping.

Role: what operators watch and what keeps the store bounded. May import config, the store and
the leaves; never intake, routing, delivery or the server.
"""
