"""``dbkit lint``: statements in migration files that are unsafe on a live database.

``engine`` parses files with PostgreSQL's own parser (pglast) and reports findings; ``rules``
holds what each rule catches and how to fix it.
"""
