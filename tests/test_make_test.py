"""`make test` runs the browser tests or says why not (tests/install_chromium.sh, tests/browser.py).

    .venv/bin/python -m pytest tests/test_make_test.py -q

The chromium step runs through `make chromium`, the target `make test` depends on, with PATH reduced to a folder of
chosen commands: no chromium, and apt-get absent, failing or working (a stand-in that records its arguments); `id`
is a stand-in too where the branch for root is under test, whoever runs the suite. The pytest side runs the browser
test modules in a child pytest without chromium on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
BROWSER_MODULES = ["tests/test_dashboard_browser.py", "tests/test_labeler_browser.py"]


def command_folder(tmp_path: Path, **scripts: str) -> Path:
    """A folder for PATH holding bash and the given stand-in commands (name: bash body)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "bash").symlink_to(shutil.which("bash"))
    for name, body in scripts.items():
        path = folder / name.replace("_", "-")
        path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
        path.chmod(0o755)
    return folder


def make_chromium(folder: Path, **env: str) -> subprocess.CompletedProcess:
    """`make chromium` with PATH = folder (plus the real `id` unless the folder has a stand-in)."""
    if not (folder / "id").exists():
        (folder / "id").symlink_to(shutil.which("id"))
    environment = {"PATH": str(folder), "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(REPO), "chromium"], env=environment,
                          capture_output=True, text=True, timeout=60)


def test_without_chromium_or_a_way_to_install_it_make_test_stops_with_one_line(tmp_path):
    done = make_chromium(command_folder(tmp_path))  # no chromium, no apt-get
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make:")]
    assert len(lines) == 1, done.stderr
    assert "chromium is not installed and cannot be installed here" in lines[0]
    assert "apt-get install chromium" in lines[0] and "PREFLOOP_SKIP_BROWSER_TESTS=1 make test" in lines[0]


def test_as_root_a_failed_install_stops_make_test_with_apt_gets_reason(tmp_path):
    folder = command_folder(tmp_path, id="echo 0", apt_get='echo "E: Unable to locate package chromium" >&2; exit 100')
    done = make_chromium(folder)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make:")]
    assert len(lines) == 1, done.stderr
    assert "apt-get install chromium failed (E: Unable to locate package chromium)" in lines[0]


def test_as_root_make_test_installs_chromium_with_apt_get(tmp_path):
    calls = tmp_path / "apt-calls"
    folder = tmp_path / "bin"
    installs = f'echo "$*" >> {calls}; if [ "$1" = install ]; then printf "#!/bin/sh\\n" > {folder}/chromium; ' \
               f"{shutil.which('chmod')} +x {folder}/chromium; fi"
    command_folder(tmp_path, id="echo 0", apt_get=installs)
    done = make_chromium(folder)
    assert done.returncode == 0, done.stderr
    assert "installing chromium" in done.stdout
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]
    assert make_chromium(folder).returncode == 0 and calls.read_text().count("install") == 1  # installed: no apt


def test_the_opt_out_lets_make_test_run_without_chromium(tmp_path):
    done = make_chromium(command_folder(tmp_path), PREFLOOP_SKIP_BROWSER_TESTS="1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def run_browser_tests(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The browser test modules in a child pytest whose PATH has no chromium."""
    environment = {key: value for key, value in os.environ.items() if key != "PREFLOOP_SKIP_BROWSER_TESTS"}
    environment |= {"PATH": str(command_folder(tmp_path)), **env}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BROWSER_MODULES],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_with_the_opt_out_the_summary_says_the_browser_tests_were_skipped_by_it(tmp_path):
    done = run_browser_tests(tmp_path, PREFLOOP_SKIP_BROWSER_TESTS="1")
    assert done.returncode == 0, done.stdout[-3000:]
    summary = done.stdout.splitlines()
    assert any(line.startswith("SKIPPED [") and "browser tests skipped by PREFLOOP_SKIP_BROWSER_TESTS=1" in line
               for line in summary), done.stdout[-3000:]
    assert summary[-1].split(" in ")[0].endswith("5 skipped"), summary[-1]


def test_without_chromium_and_without_the_opt_out_the_browser_tests_fail(tmp_path):
    done = run_browser_tests(tmp_path)
    assert done.returncode != 0
    assert "chromium is not on PATH" in done.stdout
    assert "5 error" in done.stdout.splitlines()[-1], done.stdout[-3000:]

