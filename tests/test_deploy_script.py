"""scripts/deploy sets up a fresh machine: the Pulumi CLI (installed into .pulumi/ when the one on
PATH is missing or too old), the virtualenv (pip only when requirements.txt changed), then `up`.

Fully offline: the script runs in a copy of the project with stand-ins first on PATH (python3,
and the pulumi CLIs), and PULUMI_INSTALL_SCRIPT_URL points real curl at a stand-in installer
through a file:// URL. Every stand-in records its arguments, and the tests assert on those.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import PROJECT_DIR

EXTRA_UP_ARGS = ["--yes", "--message", "two words"]


def pinned_versions(project: Path = PROJECT_DIR) -> dict[str, str]:
    """.pulumi-version's key=value lines (comments skipped), as the script reads them."""
    lines = (project / ".pulumi-version").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def as_tuple(version: str) -> tuple[int, ...]:
    numbers = tuple(int(part) for part in version.split("."))
    return numbers + (0,) * (3 - len(numbers))


TESTED = pinned_versions()["tested"]
MINIMUM = pinned_versions()["minimum"]

# Appends one tab-separated line of its arguments to the file named first (POSIX sh).
LOG_ARGS = r"""log_args() {
    _log=$1; shift
    _sep=""
    { for _arg in "$@"; do printf '%s%s' "$_sep" "$_arg"; _sep=$(printf '\t'); done; printf '\n'; } >>"$_log"
}
"""


def pulumi_script(prints: str, log: Path) -> str:
    """A pulumi CLI that prints PRINTS for `version` and records every other call in LOG."""
    return (
        f"#!/bin/sh\n{LOG_ARGS}"
        f'if [ "$1" = version ]; then echo "{prints}"; exit 0; fi\n'
        f'log_args "{log}" "$@"\n'
    )


class Bed:
    """A copy of the project, a stand-in bin directory and the logs of every stand-in."""

    def __init__(self, tmp_path: Path):
        self.project = tmp_path / "project"
        self.bin = tmp_path / "bin"
        self.logs = tmp_path / "logs"
        self.home = tmp_path / "home"
        self.installer = tmp_path / "installer" / "install.sh"
        for directory in (self.project / "scripts", self.bin, self.logs, self.home, self.installer.parent):
            directory.mkdir(parents=True)
        shutil.copy2(PROJECT_DIR / "scripts" / "deploy", self.project / "scripts" / "deploy")
        for name in (".pulumi-version", "requirements.txt"):
            shutil.copy2(PROJECT_DIR / name, self.project / name)
        self.python3_stand_in()
        self.installer_stand_in(fails=False)

    def python3_stand_in(self) -> None:
        """python3 -m venv venv creates venv/bin/pip, which records its arguments."""
        pip_log = self.logs / "pip.log"
        pip = f"#!/bin/sh\n{LOG_ARGS}log_args \"{pip_log}\" \"$@\"\n"
        python3 = self.bin / "python3"
        python3.write_text(
            f"#!/bin/sh\n{LOG_ARGS}"
            f'log_args "{self.logs / "python3.log"}" "$@"\n'
            '[ "$1 $2 $3" = "-m venv venv" ] || { echo "stand-in python3: unexpected $*" >&2; exit 2; }\n'
            "mkdir -p venv/bin\n"
            f"cat >venv/bin/pip <<'PIP'\n{pip}PIP\n"
            "chmod +x venv/bin/pip\n"
        )
        python3.chmod(0o755)

    def installer_stand_in(self, fails: bool) -> None:
        """Pulumi's installer: --version V --install-root DIR writes DIR/bin/pulumi printing vV."""
        stand_in_pulumi = pulumi_script("v@VERSION@", self.logs / "pulumi-installed.log")
        self.installer.write_text(
            f"#!/bin/sh\nset -e\n{LOG_ARGS}"
            f'log_args "{self.logs / "installer.log"}" "$@"\n'
            + ("echo 'stand-in installer: download failed' >&2; exit 1\n" if fails else "")
            + "version=''; root=''\n"
            "while [ $# -gt 0 ]; do\n"
            "  case $1 in\n"
            "    --version) version=$2; shift ;;\n"
            "    --install-root) root=$2; shift ;;\n"
            "    --no-edit-path|--silent) ;;\n"
            "    *) echo \"stand-in installer: unknown option '$1'\" >&2; exit 1 ;;\n"
            "  esac\n"
            "  shift\n"
            "done\n"
            '[ -n "$version" ] && [ -n "$root" ]\n'
            'mkdir -p "$root/bin"\n'
            f"cat >\"$root/bin/pulumi\" <<'PULUMI'\n{stand_in_pulumi}PULUMI\n"
            'sed -i "s/@VERSION@/$version/" "$root/bin/pulumi"\n'
            'chmod +x "$root/bin/pulumi"\n'
        )

    def pulumi_on_path(self, prints: str) -> None:
        pulumi = self.bin / "pulumi"
        pulumi.write_text(pulumi_script(prints, self.logs / "pulumi-path.log"))
        pulumi.chmod(0o755)

    def run(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
        env = {
            "PATH": path or f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.home),
            "PULUMI_INSTALL_SCRIPT_URL": self.installer.as_uri(),
        }
        return subprocess.run(
            [str(self.project / "scripts" / "deploy"), *args],
            check=False, env=env, cwd=self.home, capture_output=True, text=True, timeout=60,
        )

    def calls(self, name: str) -> list[list[str]]:
        log = self.logs / f"{name}.log"
        return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []

    def requirement_installs(self) -> int:
        return self.calls("pip").count(["install", "--quiet", "-r", "requirements.txt"])


@pytest.fixture
def bed(tmp_path):
    for directory in ("/usr/bin", "/bin"):
        assert not Path(directory, "pulumi").exists(), "a real pulumi in /usr/bin would take part in the tests"
    return Bed(tmp_path)


def deployed(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def up_calls(stack: str = "dev") -> list[list[str]]:
    return [["stack", "select", "--create", stack], ["up", "--stack", stack, *EXTRA_UP_ARGS]]


def test_without_a_pulumi_cli_it_installs_the_tested_version_into_the_project(bed):
    result = deployed(bed.run("dev", *EXTRA_UP_ARGS))
    assert bed.calls("installer") == [
        ["--version", TESTED, "--install-root", str(bed.project / ".pulumi"), "--no-edit-path"]
    ]
    assert f"Installing Pulumi CLI {TESTED} into .pulumi/ (found: none, minimum {MINIMUM})" in result.stdout
    assert bed.calls("pulumi-installed") == up_calls()
    assert bed.calls("python3") == [["-m", "venv", "venv"]]
    assert bed.requirement_installs() == 1
    assert (bed.project / "venv" / ".requirements.sha256").exists()


@pytest.mark.parametrize("old", ["v3.100.0", "v3.258.0", "pulumi, but no version"])
def test_an_older_or_unknown_cli_on_path_is_replaced_by_the_installed_one(bed, old):
    bed.pulumi_on_path(old)
    result = deployed(bed.run("dev", *EXTRA_UP_ARGS))
    assert bed.calls("installer") == [
        ["--version", TESTED, "--install-root", str(bed.project / ".pulumi"), "--no-edit-path"]
    ]
    assert f"Installing Pulumi CLI {TESTED} into .pulumi/ (found: {old} at {bed.bin / 'pulumi'}" in result.stdout
    assert bed.calls("pulumi-installed") == up_calls()
    assert bed.calls("pulumi-path") == [], "the old CLI on PATH must not run anything"


@pytest.mark.parametrize("recent", [f"v{MINIMUM}", "v3.300.0", "v4.0.0-dev.0"])
def test_a_recent_enough_cli_on_path_is_used_and_nothing_is_downloaded(bed, recent):
    bed.pulumi_on_path(recent)
    deployed(bed.run("prod", *EXTRA_UP_ARGS))
    assert bed.calls("installer") == []
    assert not (bed.project / ".pulumi").exists()
    assert bed.calls("pulumi-path") == up_calls("prod")


def test_a_second_run_reuses_the_cli_and_the_venv_until_requirements_change(bed):
    deployed(bed.run())
    assert bed.calls("installer") != [] and bed.requirement_installs() == 1

    result = deployed(bed.run())
    assert len(bed.calls("installer")) == 1, "the installed CLI must be reused, not downloaded again"
    assert bed.requirement_installs() == 1, "an unchanged requirements.txt must not run pip again"
    assert len(bed.calls("python3")) == 1
    assert f"Using the Pulumi CLI {TESTED} in .pulumi/" in result.stdout
    assert bed.calls("pulumi-installed")[-2:] == [["stack", "select", "--create", "dev"], ["up", "--stack", "dev"]]

    with (bed.project / "requirements.txt").open("a") as requirements:
        requirements.write("rich>=13\n")
    deployed(bed.run())
    assert bed.requirement_installs() == 2
    assert len(bed.calls("installer")) == 1


def test_a_new_tested_version_replaces_the_installed_cli(bed):
    deployed(bed.run())
    pins = bed.project / ".pulumi-version"
    pins.write_text(pins.read_text().replace(f"tested={TESTED}", "tested=3.999.1"))
    deployed(bed.run())
    assert [call[1] for call in bed.calls("installer")] == [TESTED, "3.999.1"]


def test_a_failing_installer_stops_the_deploy_naming_the_version(bed):
    bed.installer_stand_in(fails=True)
    result = bed.run("dev", *EXTRA_UP_ARGS)
    assert result.returncode != 0
    assert len(bed.calls("installer")) == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("deploy: error:")]
    assert errors and TESTED in errors[0], result.stderr
    assert bed.calls("pulumi-installed") == [] and bed.calls("pip") == [] and bed.calls("python3") == []


def test_without_curl_it_says_so(bed, tmp_path):
    """Only the programs the script needs besides curl, each linked from the real system."""
    no_curl = tmp_path / "no-curl"
    no_curl.mkdir()
    for program in ("bash", "sh", "dirname", "sed", "tr", "head", "cat", "cut", "mkdir", "mktemp", "rm",
                    "chmod", "sha256sum", "tar"):
        found = shutil.which(program, path="/usr/bin:/bin")
        assert found, program
        os.symlink(found, no_curl / program)
    result = bed.run(path=f"{bed.bin}:{no_curl}")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("deploy: error:")]
    assert errors and "'curl'" in errors[0] and TESTED in errors[0], result.stderr
    assert bed.calls("installer") == [] and bed.calls("python3") == []


def test_the_pinned_versions_agree_with_each_other_and_with_requirements():
    assert re.fullmatch(r"\d+\.\d+\.\d+", TESTED) and re.fullmatch(r"\d+\.\d+\.\d+", MINIMUM)
    assert as_tuple(TESTED) >= as_tuple(MINIMUM)
    floors = [
        match.group(1)
        for line in (PROJECT_DIR / "requirements.txt").read_text().splitlines()
        if (match := re.match(r"pulumi==([\d.]+)", line.strip()))
    ]
    assert len(floors) == 1, "requirements.txt pins the pulumi SDK exactly"
    # A CLI at least as new as the SDK the program runs with.
    assert as_tuple(MINIMUM) >= as_tuple(floors[0])
