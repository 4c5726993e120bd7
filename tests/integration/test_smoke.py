from protos.runner.v1 import runner_pb2 as pb
from tests.conftest import diagnostic, events_of, final_state


async def test_submit_runs_to_success_and_streams_every_event(runner):
    run = await runner.stub.SubmitRun(diagnostic(ticks=3, log_every=1))
    assert run.state == pb.QUEUED  # the run as accepted
    events = await events_of(runner.stub, run.run_id)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert final_state(events) == pb.SUCCEEDED
    assert [e.log.message for e in events if e.WhichOneof("event") == "log"] == ["tick 1", "tick 2", "tick 3"]
    stored = await runner.stub.GetRun(pb.GetRunRequest(run_id=run.run_id))
    assert stored.state == pb.SUCCEEDED
    assert stored.result.fields["ticks"].number_value == 3


async def test_the_runner_works_on_postgresql(start_runner, postgres_url):
    async with start_runner(database_url=postgres_url) as running:
        run = await running.stub.SubmitRun(diagnostic(ticks=2, log_every=1, request_id="pg-1"))
        again = await running.stub.SubmitRun(diagnostic(ticks=2, log_every=1, request_id="pg-1"))
        assert again.run_id == run.run_id
        events = await events_of(running.stub, run.run_id)
        assert final_state(events) == pb.SUCCEEDED
        replay = await events_of(running.stub, run.run_id, after_seq=2)

        # Progress may be conflated live; everything else is identical in the replay.
        def kept(evs):
            return [e.seq for e in evs if e.seq > 2 and e.WhichOneof("event") != "progress"]

        assert kept(replay) == kept(events) and replay[-1] == events[-1]
