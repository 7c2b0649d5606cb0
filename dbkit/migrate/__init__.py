"""Versioned migrations on yoyo's bookkeeping (``dbkit migrate``, ``status``, ``rollback``, ...).

``files`` (the directory and its files), ``bookkeeping`` (the tables: yoyo's, checksums,
history), ``lock`` (one run per database), ``runner`` (one migration, recorded atomically),
``drift`` (applied files that changed), and ``commands`` (the library API the CLI calls).
"""
