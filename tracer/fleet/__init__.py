"""The fleet: many hosts' stores shipped to one central PostgreSQL (docs/fleet.md).

db.py        connecting to PostgreSQL (psycopg 3), one-line errors
identity.py  who a host is, and what a path is across hosts (mountinfo, [fleet] shared)
migrate.py   the central schema, versioned SQL files in migrations/
ship.py      copies committed records to the central store: once, or as a daemon loop
query.py     runs, show and lineage over every host in the central store
"""
