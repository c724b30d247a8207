"""The app ``bench.admin`` points the ``taskflow`` command at: its broker comes from
``TASKFLOW_BROKER_URL`` (set by the benchmark to its Redis prefix)."""

from taskflow import App

app = App("bench-admin", result_ttl=None)
