"""The processes and commands on top: the CLI, the ingest, the local stack, status and the
operator's commands."""
