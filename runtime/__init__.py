"""What every duet process needs from its host, below the roles: settings from TOML and the
environment (settings.py), child processes and loopback ports (children.py)."""
