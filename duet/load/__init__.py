"""`duet load`: N streaming clients for T minutes against any deployment, with the servers'
memory and KV use over time (clients.py -> watch.py -> report.py -> plot.py; cmd.py)."""
