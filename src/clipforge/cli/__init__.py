"""The ``clipforge`` command: a thin layer over the library's functions."""
