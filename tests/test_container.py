"""The container: built on a local base image with the shipped weights, it runs the FLARE
command like the local CLI and segments the bundled case.

Needs a Docker engine and a base image with python3 (``docker/test-base.sh`` makes one):
set ``FLARE22_DOCKER_BASE`` to its tag. CI does; elsewhere the Docker test is skipped.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.profile import main as profile_main
from inference.__main__ import main as infer_main
from tests.helpers import ROOT, SAMPLE_CT, bundled_case_shortfalls

BASE = os.environ.get("FLARE22_DOCKER_BASE")
WEIGHTS = ROOT / "weights"


def test_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(sys.executable), "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, **kwargs)


# Kept between runs, outside the checkout (CI clones afresh): the GPU set's wheels are ~300 MB.
WHEELS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flare22-wheels"
needs_docker = pytest.mark.skipif(
    not BASE, reason="FLARE22_DOCKER_BASE is not set (see docker/test-base.sh)"
)


def build_image(tmp_path, requirements: str, tag: str) -> str:
    """The image of this checkout on the local base, with ``requirements/<requirements>``
    installed from wheels fetched here (the build has no index to reach); its tag."""
    context = tmp_path / f"context-{requirements}"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "predict.sh"):
        shutil.copy(ROOT / name, context / name)
    ignore = shutil.ignore_patterns("__pycache__", "*_fp16.onnx")
    shutil.copytree(ROOT / "inference", context / "inference", ignore=ignore)
    shutil.copytree(ROOT / "requirements", context / "requirements", ignore=ignore)
    shutil.copytree(WEIGHTS, context / "weights", ignore=ignore)
    if requirements == "gpu.txt":  # what make gpu-weights does, into the context only
        derive = [sys.executable, "-m", "export", "--derive", str(context / "weights")]
        subprocess.run([*derive, "--precision", "fp16"], check=True, capture_output=True)
    wheels = WHEELS / requirements.removesuffix(".txt")
    pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
    listed = ROOT / "requirements" / requirements
    subprocess.run([*pip, "-r", str(listed), "-d", str(wheels)], check=True)
    shutil.copytree(wheels, context / "requirements" / "wheels")
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
        f"REQUIREMENTS={requirements}",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        "PIP_FIND_LINKS=/tmp/requirements/wheels",
        str(context),
    )
    return tag


def cli_labels(inputs, out, engine: str = "auto") -> sitk.Image:
    """``python -m inference`` on the CPU here, for the one case in ``inputs``."""
    argv = ["-i", str(inputs), "-o", str(out), "--weights", str(WEIGHTS), "--device", "cpu"]
    argv += ["--cpu-engine", engine]
    assert infer_main(argv) == 0
    [written] = out.iterdir()
    return sitk.ReadImage(str(written))


@pytest.mark.slow
@needs_docker
def test_container_segments_the_bundled_case_like_the_cli(tmp_path):
    tag = build_image(tmp_path, "cpu.txt", "flare22:test")

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

    container = sitk.ReadImage(str(outputs / "caseA.nii.gz"))
    here = cli_labels(inputs, tmp_path / "local")
    assert np.array_equal(sitk.GetArrayFromImage(container), sitk.GetArrayFromImage(here))
    assert container.GetOrigin() == here.GetOrigin()
    assert container.GetDirection() == here.GetDirection()
    # The shipped weights were trained on this very scan (weights/MODEL_CARD.md): they must
    # find its organs.
    assert not bundled_case_shortfalls(sitk.GetArrayFromImage(container))

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

    # What `docker run -v` creates for a missing outputs path belongs to root: the container's
    # uid 1000 can't write there, and must say so at once rather than after both networks.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    volumes = ["-v", f"{inputs}/:/workspace/inputs/"]
    flare = [tag, "/bin/bash", "-c", "sh predict.sh"]
    done = subprocess.run(
        [
            "docker",
            "container",
            "run",
            "--rm",
            *volumes,
            "-v",
            f"{locked}/:/workspace/outputs/",
            *flare,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "uid 1000" in done.stderr
    assert list(locked.iterdir()) == []

    # docker stop: python is the container's PID 1, which ignores SIGTERM without a handler
    # (docker would kill it 10 s later, mid-write). Stopped mid-case, nothing partial is left.
    stopped = tmp_path / "stopped"
    stopped.mkdir(mode=0o777)
    stopped.chmod(0o777)
    cid = docker(
        "container",
        "run",
        "-d",
        *volumes,
        "-v",
        f"{stopped}/:/workspace/outputs/",
        *flare,
    ).stdout.strip()
    time.sleep(4)  # imports and sessions take about a second; the case about ten on 2 CPUs
    start = time.monotonic()
    docker("container", "stop", "-t", "10", cid)
    took = time.monotonic() - start
    state = docker("container", "inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip()
    logs = docker("container", "logs", cid).stderr
    docker("container", "rm", cid)
    assert state == "143", logs
    assert took < 5 and logs.strip().splitlines()[-1].startswith("stopped by SIGTERM"), logs
    assert [p.name for p in stopped.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
@needs_docker
def test_the_gpu_image_without_a_gpu_falls_back_to_the_cpu_graphs(tmp_path):
    # The product image: onnxruntime-gpu on the base's Python. No GPU here, so this checks its
    # Python layer and the fallback, not CUDA itself (the CUDA base is not reachable from CI).
    tag = build_image(tmp_path, "gpu.txt", "flare22:test-gpu")
    code = "import onnxruntime as o; print(o.get_available_providers())"
    providers = docker("run", "--rm", tag, "python3", "-c", code).stdout
    assert "CUDAExecutionProvider" in providers, providers

    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir(mode=0o777)
    outputs.chmod(0o777)
    shutil.copy(SAMPLE_CT, inputs / "caseA_0000.nii.gz")
    volumes = ["-v", f"{inputs}/:/workspace/inputs/", "-v", f"{outputs}/:/workspace/outputs/"]
    done = docker("container", "run", "--rm", *volumes, tag, "/bin/bash", "-c", "sh predict.sh")
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "running the CPU graphs" in warnings[0], done.stderr
    container = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "caseA.nii.gz")))
    # The GPU image has no OpenVINO: on the CPU both its stages run on ONNX Runtime.
    here = cli_labels(inputs, tmp_path / "local", engine="onnxruntime")
    assert np.array_equal(container, sitk.GetArrayFromImage(here))
