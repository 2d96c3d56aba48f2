"""The `ftw` commands, one module per part of the path: each defines its click commands
(COMMANDS) and how their results are shown; wrapper/cli.py assembles them."""
