"""docker/test-base.sh: the Debian mirror comes from the machine's own apt configuration."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "docker" / "test-base.sh"
FALLBACK = "http://deb.debian.org/debian"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

DEB822 = """\
# security first: never the mirror debootstrap needs
Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://sources.example/debian
Suites: bookworm

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no

Types: deb
# a comment inside a stanza
URIs:
 http://mirror.example/debian
 http://second.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
deb [ arch=amd64 signed-by=/k.gpg ] http://mirror.example/debian-security bookworm-security main
# deb http://commented.example/debian bookworm main
deb-src http://sources.example/debian bookworm main
deb http://updates.example/debian bookworm-updates main
deb [arch=amd64] https://one-line.example/debian bookworm main contrib  # the one
"""


def apt_root(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "apt" / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / "etc" / "apt" / name).write_text(text)
    return root


def run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "DEBIAN_MIRROR"}
    environ.update(APT_ROOT=str(root), **env)
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def mirror(root: Path, **env: str) -> str:
    done = run(root, "--print-mirror", **env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_deb822_sources_skip_security_source_and_disabled_entries(tmp_path):
    root = apt_root(tmp_path, {"sources.list.d/debian.sources": DEB822})
    assert mirror(root) == "http://mirror.example/debian\n"


def test_one_line_sources_list_comes_first_as_apt_reads_it(tmp_path):
    root = apt_root(tmp_path, {"sources.list": ONE_LINE, "sources.list.d/debian.sources": DEB822})
    assert mirror(root) == "https://one-line.example/debian\n"


def test_fallback_without_a_bookworm_archive(tmp_path):
    ubuntu = "deb http://archive.ubuntu.com/ubuntu noble main\n"
    ignored = "sources.list.d/debian.sources.disabled"  # apt reads only *.list and *.sources
    root = apt_root(tmp_path, {"sources.list": ubuntu, ignored: DEB822})
    assert mirror(root) == FALLBACK + "\n"
    assert mirror(tmp_path / "no such root") == FALLBACK + "\n"


def test_debian_mirror_overrides_the_apt_configuration(tmp_path):
    root = apt_root(tmp_path, {"sources.list": ONE_LINE})
    assert mirror(root, DEBIAN_MIRROR="http://override.example/debian") == (
        "http://override.example/debian\n"
    )


def test_build_prints_only_the_tag_and_bootstraps_from_the_mirror(tmp_path):
    root = apt_root(tmp_path, {"sources.list.d/debian.sources": DEB822})
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    # Stand-ins that record their arguments: nothing is downloaded or imported.
    for tool, body in (("debootstrap", ""), ("docker", "cat >/dev/null\n")):  # docker reads tar
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n{body}')
        (bin_dir / tool).chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    done = run(root, "flare22-test-base:test", PATH=path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "flare22-test-base:test\n"
    debootstrap, docker = calls.read_text().splitlines()
    assert debootstrap.startswith("debootstrap --variant=minbase")
    words = debootstrap.split()
    assert words[-3] == "bookworm" and words[-1] == "http://mirror.example/debian"
    assert docker == "docker import - flare22-test-base:test"
