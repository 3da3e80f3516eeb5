"""`accelerate launch --cpu --num_processes 2` gives the single-process result, with the teacher never wrapped: for
hidden-state distillation (a projection outside DDP) and for FGM adversarial distillation (two backwards a step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_run.py")


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One two-process launch for the module (each process spends seconds importing): distributed_run.py into
    `multi`, then distributed_resume.py's scenarios into `resume`."""
    root = tmp_path_factory.mktemp("launch")
    (root / "resume").mkdir()
    # `accelerate launch --cpu` starts a single process unless MPI is set up; the torchrun-based launcher starts two,
    # and the script's `use_cpu=True` makes Accelerate run them as MULTI_CPU over gloo.
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
          str(root / "multi"), "2", str(root / "resume")], root)
    return root


def test_two_process_launch_matches_single_process(tmp_path, launched):
    import distributed_run

    single, multi = tmp_path / "single", launched / "multi"
    distributed_run.main(str(single), 4)  # the same global batch in one process (this one)
    _compare(single / "hidden", multi / "hidden", ("loss", "kd_loss", "ce_loss", "hidden_loss"))
    _compare(single / "fgm", multi / "fgm", ("loss", "kd_loss", "ce_loss", "adv_loss", "adv_delta_norm"))
    assert json.loads((single / "hidden" / "facts.json").read_text())["projector"]  # the hidden run has one to compare


def _compare(single, multi, logged):
    one, two = json.loads((single / "facts.json").read_text()), json.loads((multi / "facts.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["student_wrapped_in_ddp"] and not two["teacher_wrapped_in_ddp"]
    assert not two["teacher_requires_grad"] and two["teacher_unchanged"]
    a, b = load_file(str(single / "model.safetensors")), load_file(str(multi / "model.safetensors"))
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # The logged components are global averages, identical in both runs.
    assert len(one["logged"]) == len(two["logged"]) == 4
    for x, y in zip(one["logged"], two["logged"], strict=True):
        for key in logged:
            assert x[key] == pytest.approx(y[key], rel=1e-4), key
    # The feature projection (outside the DDP wrapper) ends where the single process's does.
    assert one["projector"].keys() == two["projector"].keys()
    for key in one["projector"]:
        assert torch.allclose(torch.tensor(one["projector"][key]), torch.tensor(two["projector"][key]), atol=1e-5), key


def test_two_process_checkpoints_resume_completely(launched):
    """Under two processes: trainer-owned state loads onto the process's device, a checkpoint is marked complete only
    once every process wrote its files, and batches skipped on any process are counted across a resume."""
    facts = json.loads((launched / "resume" / "facts.json").read_text())
    assert facts["world_size"] == 2
    assert facts["resume"]["hidden"] < 1e-6 and facts["resume"]["ema"] < 1e-6, facts["resume"]
    assert [seen["checkpoint"] for seen in facts["marker"]] == ["checkpoint-2", "checkpoint-4"]
    for seen in facts["marker"]:  # process 1's files were there when the checkpoint was marked complete
        assert {"rng_state_1.pth", "adversarial_rng_state_1.pth"} <= set(seen["files"]), seen
    train_loss = facts["skipped"].pop("train_loss")
    assert facts["skipped"] == {"straight": 1, "marker": 1, "resumed": 1}
    # A skip on one process among steps never logged (Trainer adds its own process's loss for those) leaves the run's
    # train_loss where a run logging every step puts it.
    assert train_loss[1] == pytest.approx(train_loss[0], rel=1e-5), train_loss
