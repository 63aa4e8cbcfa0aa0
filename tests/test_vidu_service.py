"""Vidu through a running service, beyond its seed page: a busy answer, and subjects."""

from __future__ import annotations

from tests.conftest import settings_restored, wait_for


def test_operation_in_process_is_waited_out_and_the_job_completes(service, sandbox):
    with settings_restored(sandbox.settings) as settings:
        settings.run_time = 1.0
        job = service.submit("A heron takes off")
        task_id = wait_for(lambda: service.job(job["id"])["provider_job_id"], what="task id")
        # Every request Vidu gets meanwhile (the confirming status fetches) is told to
        # come back later, as Vidu does while an operation on the task is in process.
        settings.operation_in_process = 3
        done = service.wait_status(job["id"], "completed", timeout=20)
    busy = [r for r in sandbox.vidu.requests if r.task_id == task_id and r.status_code == 400]
    assert len(busy) == 3
    assert done["result_url"] and done["error"] is None
    assert [t["to_status"] for t in done["transitions"]] == ["queued", "processing", "completed"]


def test_subjects_reach_reference2video_and_the_job_completes(service, sandbox):
    subjects = [
        {"name": "heron", "images": ["https://img.example/heron.png"]},
        {"name": "pond", "images": ["https://img.example/p1.png", "https://img.example/p2.png"]},
    ]
    job = service.submit("@heron lands in @pond", options={"subjects": subjects})
    done = service.wait_status(job["id"], "completed")
    task = sandbox.vidu.tasks[done["provider_job_id"]]
    assert task.type == "reference2video"
    assert task.body["subjects"] == subjects and "images" not in task.body


def test_a_bad_subject_is_422_and_nothing_is_written(service, sandbox):
    before, sent = service.counts(), len(sandbox.vidu.requests)
    subjects = [{"name": "heron", "images": ["https://img.example/heron.png"], "tags": ["x"]}]
    response = service.api.post(
        "/api/jobs",
        json={"provider": "vidu", "prompt": "@heron", "options": {"subjects": subjects}},
    )
    assert response.status_code == 422
    assert "unknown fields tags" in response.json()["error"]["fields"]["options.subjects[0]"]
    assert service.counts() == before and len(sandbox.vidu.requests) == sent
