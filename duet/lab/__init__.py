"""`duet lab`: the whole two-host system in network namespaces on one machine.

Host A runs the master API and a VRRP agent; host B the worker (Triton executor), the standby
API and a VRRP agent; a client namespace reaches the API through the VIP. Every piece of the
lab's state lives in one run directory (`lab.json` names the namespaces and processes), so
`duet lab down` can remove everything even after `up` crashed half-way.
"""
