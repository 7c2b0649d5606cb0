"""dbkit: give a PostgreSQL-backed application its own database.

The library is the product; ``dbkit.cli`` is a thin skin over it. Heavy imports (psycopg,
yoyo) stay inside the functions that need them so ``dbkit --help`` is fast. Where each thing
lives: docs/architecture.md (settings, db, pg, admin, server, provision, setup, doctor, and the
migrate/, lint/, seed/, testdb/ families).
"""

__version__ = "0.1.0"

# A log level between INFO and WARNING for what the user should hear without -v but is not
# a problem (dbkit started a server that outlives the command). The CLI prints it plainly.
NOTICE = 25
