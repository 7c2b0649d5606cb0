"""The posts API's tests: a package, so that its conftest is ``tests.conftest`` and never the
``conftest`` module that dbkit's own tests import from in the same pytest process."""
