"""The container: built on a local base image, it runs the FLARE command like the local CLI.

Needs a Docker engine and a base image with python3 (``docker/test-base.sh`` makes one):
set ``FLARE22_DOCKER_BASE`` to its tag. CI does; elsewhere the Docker test is skipped.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.profile import main as profile_main
from inference.__main__ import main as infer_main
from tests.helpers import ROOT, SAMPLE_CT

BASE = os.environ.get("FLARE22_DOCKER_BASE")


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, **kwargs)


@pytest.mark.slow
@pytest.mark.skipif(not BASE, reason="FLARE22_DOCKER_BASE is not set (see docker/test-base.sh)")
def test_container_runs_the_flare_command_like_the_cli(small_weights, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "predict.sh"):
        shutil.copy(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "inference", context / "inference", ignore=ignore)
    shutil.copytree(ROOT / "requirements", context / "requirements", ignore=ignore)
    shutil.copytree(small_weights, context / "weights")
    # The build has no index to reach: it installs from wheels fetched here.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-r",
            str(ROOT / "requirements" / "cpu.txt"),
            "-d",
            str(context / "requirements" / "wheels"),
        ],
        check=True,
    )
    tag = "flare22:test"
    docker(
        "build",
        "--network",
        "host",
        "-q",
        "-t",
        tag,
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "--build-arg",
        "REQUIREMENTS=cpu.txt",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        "PIP_FIND_LINKS=/tmp/requirements/wheels",
        str(context),
    )

    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    outputs.chmod(0o777)  # the container runs as an unprivileged user
    shutil.copy(SAMPLE_CT, inputs / "caseA_0000.nii.gz")
    docker(
        "container",
        "run",
        "--rm",
        "-v",
        f"{inputs}/:/workspace/inputs/",
        "-v",
        f"{outputs}/:/workspace/outputs/",
        tag,
        "/bin/bash",
        "-c",
        "sh predict.sh",
    )
    assert [p.name for p in outputs.iterdir()] == ["caseA.nii.gz"]

    local = tmp_path / "local"
    assert (
        infer_main(
            [
                "-i",
                str(inputs),
                "-o",
                str(local),
                "--weights",
                str(small_weights),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    container = sitk.ReadImage(str(outputs / "caseA.nii.gz"))
    here = sitk.ReadImage(str(local / "caseA.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(container), sitk.GetArrayFromImage(here))
    assert container.GetOrigin() == here.GetOrigin()
    assert container.GetDirection() == here.GetDirection()

    # The profiler runs the same FLARE command and finds the container's processes.
    results = tmp_path / "profile"
    argv = ["--docker", tag, "--cases", str(SAMPLE_CT), "--results", str(results)]
    assert profile_main([*argv, "--idle", "0.2"]) == 0
    [row] = json.loads((results / "summary.json").read_text())["cases"]
    assert row["status"] == "ok"
    assert row["tree_rss_peak_mib"] > 50  # python, onnxruntime and the CT inside the container
    assert (results / "outputs" / "example_ct.nii.gz").exists()

    user = docker("run", "--rm", tag, "id", "-u").stdout.strip()
    assert user != "0"
    no_torch = subprocess.run(
        ["docker", "run", "--rm", tag, "python3", "-c", "import torch"], capture_output=True
    )
    assert no_torch.returncode != 0
