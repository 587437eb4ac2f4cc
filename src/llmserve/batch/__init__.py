"""Durable batch jobs: the OpenAI Files and Batch APIs, resumed after a restart.

``states`` (the legal status transitions, one table), ``store`` (SQLite in WAL mode plus plain
files under ``--data-dir``), ``lines`` (input validation and the output line shape),
``dispatch`` (one batch line through the app's own routes, in process), ``runner`` (feeds the
lines of every active batch at low priority and records each result as it finishes).
Nothing here imports the server: the runner is handed the ASGI app it dispatches to.
"""
