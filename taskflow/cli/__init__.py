"""The ``taskflow`` command line (``taskflow.cli.main``) and its ``-A`` app loader.

Kept free of imports so that ``python -m taskflow.cli.main`` runs the module once.
"""
