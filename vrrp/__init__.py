"""A keepalived-compatible VRRPv3 agent (RFC 9568, IPv4) that moves the API's virtual IP."""
