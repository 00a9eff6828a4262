"""`duet lab up` returns only once the VRRP pair has settled: the agents' status files show A
MASTER and B BACKUP, each at its configured priority. Before that, B (healthy first) can hold
the VIP a moment and a request sent then is stranded when A takes it back (seen: a curl that
never returned)."""
import json

import pytest

from duet.lab.build import vrrp_settled
from duet.lab.topology import LabState


def write_agents(run, a: tuple[str, int], b: tuple[str, int]) -> LabState:
    for host, (state, priority), base in (("a", a, 150), ("b", b, 100)):
        (run / f"vrrp-{host}.json").write_text(json.dumps(
            {"state": state, "priority": priority, "base_priority": base}))
    return LabState(str(run), "t")


@pytest.mark.parametrize("a, b, settled", [
    (("MASTER", 150), ("BACKUP", 100), True),
    (("MASTER", 90), ("BACKUP", 40), False),    # neither API ready yet: A's lead is not final
    (("MASTER", 90), ("BACKUP", 100), False),   # B healthy first: it is about to preempt
    (("BACKUP", 150), ("MASTER", 100), False),  # A healthy again, not yet back as MASTER
    (("MASTER", 150), ("MASTER", 100), False),  # both hold the VIP for a moment
])
def test_up_waits_for_a_master_and_b_backup_at_full_priority(tmp_path, a, b, settled):
    assert vrrp_settled(write_agents(tmp_path, a, b)) is settled


def test_an_agent_that_wrote_no_status_yet_is_not_settled(tmp_path):
    state = write_agents(tmp_path, ("MASTER", 150), ("BACKUP", 100))
    (tmp_path / "vrrp-b.json").unlink()
    assert not vrrp_settled(state)
