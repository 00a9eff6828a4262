"""`duet drill SCENARIO`: inject a fault into the two-host system while clients stream
completions through the VIP, and report what the clients saw."""
