"""Test databases: a template kept at the latest migrations and cheap clones of it.

``template`` (the template, its owner role, builds), ``clones`` (a live process's clones, and
leftovers of dead ones), ``commands`` (``dbkit testdb create``/``drop``), ``plugin`` (the pytest
fixtures).
"""
