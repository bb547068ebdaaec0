"""Small, pure pieces the shell cannot do: the envelope filter, retention math, plists.

Nothing here imports invoke; tasks.py composes these with pg_dump, gzip and psql.
"""
