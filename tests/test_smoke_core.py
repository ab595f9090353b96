import uuid


def test_spawn_claim_complete(client):
    spawned = client.spawn("noop", {"a": 1})
    claimed = client.claim(uuid.uuid4(), 10, 30)
    assert [c.task_id for c in claimed] == [spawned.task_id]
    assert client.complete(claimed[0].run_id, {"ok": True}) == "completed"
    assert client.show(spawned.task_id)["state"] == "completed"
