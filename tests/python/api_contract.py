"""The job API as an outside user drives it: a plain grpcio client, stubs generated from the
repository's proto with grpcio-tools, error details read with grpcio-status. No Rust in between.

Run by tests/grpcio_api.rs against a real prune-server:
    python api_contract.py REPO_ROOT ADDR DATA_DIR
with PRUNE_ALICE_TOKEN and PRUNE_BOB_TOKEN naming two tenants. Exits non-zero on the first failed
check, printing what was expected and what came back.
"""

import importlib.resources
import io
import os
import sys
import tempfile
import time
import uuid

import grpc
from grpc_status import rpc_status
from grpc_tools import protoc
from google.rpc import error_details_pb2

ROOT, ADDR, DATA_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
ALICE = os.environ["PRUNE_ALICE_TOKEN"]
BOB = os.environ["PRUNE_BOB_TOKEN"]
DEADLINE = 120.0


def generate_stubs():
    out = tempfile.mkdtemp(prefix="prune-stubs-")
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{os.path.join(ROOT, 'proto')}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(ROOT, "proto", "pruning", "v1", "pruning.proto"),
    ])
    assert rc == 0, f"protoc failed with {rc}"
    sys.path.insert(0, out)
    from pruning.v1 import pruning_pb2, pruning_pb2_grpc  # noqa: E402
    return pruning_pb2, pruning_pb2_grpc


pb, pb_grpc = generate_stubs()
channel = grpc.insecure_channel(ADDR)
stub = pb_grpc.PruningServiceStub(channel)


def auth(token):
    return [("authorization", f"Bearer {token}")]


def details(error):
    """ErrorInfo and the other details of a failed call, from grpc-status-details-bin."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status in the trailers of {error.code()}: {error.details()}"
    found = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.QuotaFailure,
                     error_details_pb2.RetryInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found[kind.__name__] = message
    assert "ErrorInfo" in found, f"no ErrorInfo in {status}"
    return found


def expect_error(call, code):
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        return e
    raise AssertionError(f"expected {code}, the call succeeded")


def upload(token, data):
    import hashlib
    sha = hashlib.sha256(data).hexdigest()

    def messages():
        yield pb.UploadBlobRequest(header=pb.BlobHeader(size=len(data), sha256=sha))
        for i in range(0, len(data), 1 << 20):
            yield pb.UploadBlobRequest(data=data[i:i + (1 << 20)])

    return stub.UploadBlob(messages(), metadata=auth(token)).id


def state_dict():
    import torch
    from safetensors.torch import save
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def one_shot(blob, name):
    return pb.JobSpec(
        name=name,
        model=pb.ModelSpec(blob=blob),
        pruning=pb.PruningSpec(schedule=pb.Schedule(kind="constant_sparsity", target_sparsity=0.5)),
    )


def wait(token, job_id, done):
    end = time.time() + DEADLINE
    while True:
        job = stub.GetJob(pb.GetJobRequest(id=job_id), metadata=auth(token))
        if done(job):
            return job
        assert time.time() < end, f"job {job_id} still {pb.JobState.Name(job.state)} after {DEADLINE} s"
        time.sleep(0.05)


def terminal(job):
    return job.state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)


def check_idempotent_submit(blob):
    request_id = str(uuid.uuid4())
    request = pb.CreateJobRequest(spec=one_shot(blob, "idempotent"), request_id=request_id)
    first = stub.CreateJob(request, metadata=auth(ALICE))
    again = stub.CreateJob(request, metadata=auth(ALICE))
    assert first.id and first.id == again.id, f"a retry made a second job: {first.id} vs {again.id}"
    other = pb.CreateJobRequest(spec=one_shot(blob, "something else"), request_id=request_id)
    error = expect_error(lambda: stub.CreateJob(other, metadata=auth(ALICE)), grpc.StatusCode.ALREADY_EXISTS)
    assert details(error)["ErrorInfo"].reason == "REQUEST_ID_REUSED", details(error)
    wait(ALICE, first.id, terminal)
    print("idempotent submit: ok", first.id)


def check_structured_errors(blob):
    spec = one_shot(blob, "bad")
    spec.pruning.schedule.target_sparsity = 1.5
    spec.training.batch_size = 0
    error = expect_error(lambda: stub.CreateJob(pb.CreateJobRequest(spec=spec), metadata=auth(ALICE)),
                         grpc.StatusCode.INVALID_ARGUMENT)
    found = details(error)
    assert found["ErrorInfo"].reason == "SPEC_INVALID", found
    assert found["ErrorInfo"].domain == "prune.pruning.v1", found
    fields = [v.field for v in found["BadRequest"].field_violations]
    assert "pruning.schedule.target_sparsity" in fields and "training.batch_size" in fields, fields
    assert "pruning.schedule.target_sparsity" in error.details(), "the message text stays"

    missing = expect_error(lambda: stub.GetJob(pb.GetJobRequest(id="job-00000000deadbeef"), metadata=auth(ALICE)),
                           grpc.StatusCode.NOT_FOUND)
    assert details(missing)["ErrorInfo"].reason == "JOB_NOT_FOUND"
    bad_filter = expect_error(lambda: stub.ListJobs(pb.ListJobsRequest(filter="colour = red"), metadata=auth(ALICE)),
                              grpc.StatusCode.INVALID_ARGUMENT)
    assert details(bad_filter)["ErrorInfo"].reason == "FILTER_INVALID"
    assert "colour" in bad_filter.details(), bad_filter.details()
    unauthenticated = expect_error(lambda: stub.GetJob(pb.GetJobRequest(id="job-00000000deadbeef")),
                                   grpc.StatusCode.UNAUTHENTICATED)
    assert details(unauthenticated)["ErrorInfo"].reason == "UNAUTHENTICATED"
    print("structured errors: ok", fields)


def check_labels_and_filters(blob):
    vision = stub.CreateJob(pb.CreateJobRequest(spec=one_shot(blob, "labelled"), labels={"team": "vision", "run": "a1"}),
                            metadata=auth(ALICE))
    stub.CreateJob(pb.CreateJobRequest(spec=one_shot(blob, "other"), labels={"team": "audio"}), metadata=auth(ALICE))
    assert dict(vision.labels) == {"team": "vision", "run": "a1"}, vision.labels
    listed = stub.ListJobs(pb.ListJobsRequest(filter='labels.team = "vision"'), metadata=auth(ALICE)).jobs
    assert [j.id for j in listed] == [vision.id], [j.id for j in listed]
    assert not listed[0].HasField("spec"), "BASIC view leaves the spec out"
    full = stub.ListJobs(pb.ListJobsRequest(filter='labels.team = "vision" AND name = "labelled"', view=pb.FULL),
                         metadata=auth(ALICE)).jobs
    assert [j.id for j in full] == [vision.id] and full[0].HasField("spec")
    assert not stub.ListJobs(pb.ListJobsRequest(filter='labels.team = "vision"'), metadata=auth(BOB)).jobs, \
        "another tenant's labels filter nothing in"
    bad = expect_error(lambda: stub.CreateJob(pb.CreateJobRequest(spec=one_shot(blob, "x"), labels={"Team": "x"}),
                                              metadata=auth(ALICE)), grpc.StatusCode.INVALID_ARGUMENT)
    assert [v.field for v in details(bad)["BadRequest"].field_violations] == ["labels.Team"]
    wait(ALICE, vision.id, terminal)
    succeeded = stub.ListJobs(pb.ListJobsRequest(filter=f'labels.run = "a1" AND state = SUCCEEDED'),
                              metadata=auth(ALICE)).jobs
    assert [j.id for j in succeeded] == [vision.id], succeeded
    print("labels and filters: ok")


def files_of(job_id):
    hits = []
    for root, _dirs, files in os.walk(DATA_DIR):
        if job_id in root:
            hits.extend(os.path.join(root, f) for f in files)
    return hits


def check_delete(blob):
    job = stub.CreateJob(pb.CreateJobRequest(spec=one_shot(blob, "to delete")), metadata=auth(ALICE))
    job = wait(ALICE, job.id, terminal)
    assert job.state == pb.SUCCEEDED, job
    assert files_of(job.id), "the artifact is in the data dir before the delete"
    logs = list(stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.id), metadata=auth(ALICE)))
    assert all(line.attempt == 1 for line in logs), logs
    stub.DeleteJob(pb.DeleteJobRequest(id=job.id), metadata=auth(ALICE))
    gone = expect_error(lambda: stub.GetJob(pb.GetJobRequest(id=job.id), metadata=auth(ALICE)),
                        grpc.StatusCode.NOT_FOUND)
    assert details(gone)["ErrorInfo"].reason == "JOB_NOT_FOUND"
    assert not files_of(job.id), f"files left after the delete: {files_of(job.id)}"
    print("delete: ok", job.id)


def check_fair_share(blob):
    # The server runs one job at a time; alice queues 20, then bob queues one.
    alice_jobs = [stub.CreateJob(pb.CreateJobRequest(spec=one_shot(blob, f"alice {i}")), metadata=auth(ALICE)).id
                  for i in range(20)]
    bob_job = stub.CreateJob(pb.CreateJobRequest(spec=one_shot(blob, "bob")), metadata=auth(BOB)).id
    bob = wait(BOB, bob_job, terminal)
    assert bob.state == pb.SUCCEEDED, bob
    alice = [stub.GetJob(pb.GetJobRequest(id=i), metadata=auth(ALICE)) for i in alice_jobs]
    unfinished = [j.id for j in alice if not terminal(j) or j.finished_unix_ms > bob.started_unix_ms]
    assert unfinished, "bob's job waited for all 20 of alice's"
    started_before_bob = [j for j in alice if 0 < j.started_unix_ms <= bob.started_unix_ms]
    assert len(started_before_bob) <= 2, f"{len(started_before_bob)} of alice's jobs started before bob's"
    for job_id in alice_jobs:
        stub.CancelJob(pb.CancelJobRequest(id=job_id), metadata=auth(ALICE))
    print(f"fair share: ok (bob's job started after {len(started_before_bob)} of alice's 20)")


def check_server_info():
    info = stub.GetServerInfo(pb.GetServerInfoRequest(), metadata=auth(ALICE))
    assert info.api_version == "pruning.v1" and info.version, info
    assert "cpu" in info.devices and "safetensors" in info.export_formats, info
    assert info.data_dir_bytes > 0 and info.limits.max_upload_bytes > 0, info
    print("server info: ok", info.version, list(info.devices))


def main():
    grpc.channel_ready_future(channel).result(timeout=30)
    data = state_dict()
    blob = upload(ALICE, data)
    upload(BOB, data)
    check_server_info()
    check_structured_errors(blob)
    check_idempotent_submit(blob)
    check_labels_and_filters(blob)
    check_delete(blob)
    check_fair_share(blob)
    print("all API contract checks passed")


if __name__ == "__main__":
    main()
