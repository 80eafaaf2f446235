"""The GitHub Actions workflows (.github/workflows): linted with no finding by actionlint (which
runs shellcheck on every `run:` script) and zizmor, and checked to do what the README says.

- tests: the README's test command on a hosted runner, for every push and pull request;
- preview: `pulumi preview` of every stack through pulumi/actions, commented on the pull
  request, on a self-hosted runner inside the home network;
- renewal: a monthly preview, then the README's deploy command behind the `production`
  environment.

Every action is pinned by commit, every job has its own least permissions, secrets reach
scripts only through `env:`, and every job of a stack shares one concurrency group. The
commands are read from the README's "The two commands", never retyped here.
"""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_deploy_script import TESTED, Bed, deployed

from harness import PROJECT_DIR

WORKFLOWS_DIR = PROJECT_DIR / ".github" / "workflows"
# requirements-dev.txt installs both linters into the virtualenv that runs pytest.
VENV_BIN = Path(sys.executable).parent
SECRETS = {"PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "KUBECONFIG_DATA", "SSH_PRIVATE_KEY"}
# Only for the step that writes the kubeconfig and loads the key into the SSH agent.
ACCESS_SECRETS = {"KUBECONFIG_DATA", "SSH_PRIVATE_KEY"}
PULUMI_ACTION = "pulumi/actions"
STACK_EXPRESSION = "${{ matrix.stack }}"
# zizmor's "auditor" persona (false positives OK) reports these two, by design:
# self-hosted-runner: the cluster is reachable only from inside the home network;
# secrets-outside-env: the pull requests' preview reads repository secrets without an
# environment (an environment would add a deployment to every pull request and protect
# nothing: the preview must run on pull request branches).
ACCEPTED_AUDITOR_FINDINGS = {"self-hosted-runner", "secrets-outside-env"}

BAD_WORKFLOW = """\
name: bad
on: pull_request
jobs:
  bad:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@v7
      - run: echo ${{ secrets.TOKEN }} $HOME "${{ github.event.pull_request.title }}"
"""


# --- Reading the workflows and the README ---------------------------------------------------

def workflow_files(directory: Path = WORKFLOWS_DIR) -> list[Path]:
    return sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def workflow(name: str) -> dict:
    return load(WORKFLOWS_DIR / f"{name}.yml")


def triggers(document: dict) -> dict:
    """The `on:` mapping (YAML 1.1, which PyYAML reads, makes the bare key `on` the boolean True)."""
    on = document["on"] if "on" in document else document[True]
    return {on: None} if isinstance(on, str) else on


def all_jobs() -> list[tuple[str, str, dict]]:
    return [(path.name, name, job) for path in workflow_files() for name, job in load(path)["jobs"].items()]


def steps_of(job: dict) -> list[dict]:
    return job.get("steps", [])


def action_of(step: dict) -> str:
    return step.get("uses", "").split("@", 1)[0]


def pulumi_step(job: dict) -> dict:
    found = [step for step in steps_of(job) if action_of(step) == PULUMI_ACTION]
    assert len(found) == 1, "a preview job runs pulumi/actions once"
    return found[0]


def preview_jobs() -> list[tuple[str, str, dict]]:
    """Every job that runs pulumi/actions (the pull requests' preview and the renewal's)."""
    return [(file, name, job) for file, name, job in all_jobs()
            if any(action_of(step) == PULUMI_ACTION for step in steps_of(job))]


def stack_jobs() -> list[tuple[str, str, dict]]:
    """Every job that works on a stack: the ones with a stack matrix."""
    return [(file, name, job) for file, name, job in all_jobs() if "stack" in job.get("strategy", {}).get("matrix", {})]


def stacks_from_files() -> list[str]:
    return sorted(path.name[len("Pulumi."):-len(".yaml")] for path in PROJECT_DIR.glob("Pulumi.*.yaml"))


def readme_commands() -> tuple[list[str], list[str]]:
    """The two one-line sh blocks of the README's "The two commands": deploy, then test."""
    readme = (PROJECT_DIR / "README.md").read_text()
    section = readme.split("\n## The two commands\n", 1)[1].split("\n## ", 1)[0]
    blocks = [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]
    assert len(blocks) == 2 and all("\n" not in block for block in blocks), blocks
    deploy, test = (shlex.split(block) for block in blocks)
    return deploy, test


def run_lines(step: dict) -> list[list[str]]:
    """Each non-empty line of a step's script, split as the shell would split its words."""
    return [shlex.split(line) for line in step.get("run", "").splitlines() if line.strip()]


def named_step(job: dict, name: str) -> dict:
    found = [step for step in steps_of(job) if step.get("name") == name]
    assert len(found) == 1, f"one step named {name!r}"
    return found[0]


def github_glob(pattern: str) -> re.Pattern:
    """A workflow `paths:` pattern: `**` crosses directories, `*` does not."""
    parts = re.split(r"(\*\*|\*)", pattern)
    return re.compile("".join({"**": ".*", "*": "[^/]*"}.get(part, re.escape(part)) for part in parts))


# --- Structural problems, also applied to a bad workflow to show they are caught -------------

def unpinned_uses(text: str) -> list[str]:
    """Every `uses:` that is not `owner/repo@<40 hex>  # vX.Y.Z` (local `./` actions excepted)."""
    problems = []
    for line in text.splitlines():
        match = re.search(r"\buses:\s*(\S+)(.*)", line)
        if not match or match.group(1).startswith("./"):
            continue
        pinned = re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", match.group(1))
        commented = re.fullmatch(r"\s*#\s*v\d+\.\d+\.\d+\s*", match.group(2))
        if not (pinned and commented):
            problems.append(line.strip())
    return problems


def expressions_in_scripts(document: dict) -> list[str]:
    """Every `run:` script that contains a `${{ }}` expression (data must come through `env:`)."""
    return [step["run"] for job in document["jobs"].values() for step in steps_of(job)
            if "${{" in step.get("run", "")]


# --- The linters ----------------------------------------------------------------------------

def tool(name: str) -> str:
    path = shutil.which(name, path=str(VENV_BIN))
    assert path, f"{name} is missing from {VENV_BIN}: venv/bin/pip install -r requirements-dev.txt (./scripts/test does)"
    return path


def actionlint(*files: Path, cwd: Path = PROJECT_DIR) -> tuple[int, list[dict]]:
    assert shutil.which("shellcheck"), "actionlint checks run: scripts only with shellcheck on PATH"
    result = subprocess.run(
        [tool("actionlint"), "-no-color", "-format", "{{json .}}", *map(str, files)],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode in (0, 1), f"actionlint failed to run:\n{result.stdout}\n{result.stderr}"
    return result.returncode, json.loads(result.stdout)


def zizmor(target: Path, persona: str = "pedantic") -> tuple[int, list[dict]]:
    """zizmor offline, no configuration, no ignore comments: exit 0 means no finding, 10-14 findings."""
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--no-config", "--no-ignores", "--no-progress", f"--persona={persona}",
         "--format", "json", str(target)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0 or result.returncode >= 10, f"zizmor failed to run:\n{result.stdout}\n{result.stderr}"
    return result.returncode, json.loads(result.stdout)


def described(findings: list[dict]) -> list[str]:
    return [
        f"{finding['ident']}: {finding['desc']} at {location['symbolic']['key']['Local']['verbatim_path']}:"
        f"{location['concrete']['location']['start_point']['row'] + 1}"
        for finding in findings for location in finding["locations"][:1]
    ]


def test_the_three_workflows_exist():
    assert [path.name for path in workflow_files()] == ["preview.yml", "renewal.yml", "tests.yml"]


def test_actionlint_and_shellcheck_find_nothing():
    returncode, errors = actionlint(*workflow_files())
    assert (returncode, errors) == (0, []), "\n".join(f"{e['filepath']}:{e['line']}: {e['message']}" for e in errors)


def test_zizmor_finds_nothing_even_pedantic():
    returncode, findings = zizmor(WORKFLOWS_DIR)
    assert (returncode, described(findings)) == (0, [])


def test_zizmor_as_auditor_reports_only_the_accepted_risks():
    _, findings = zizmor(WORKFLOWS_DIR, persona="auditor")
    assert {finding["ident"] for finding in findings} <= ACCEPTED_AUDITOR_FINDINGS, described(findings)


def test_the_checks_catch_a_bad_workflow(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(BAD_WORKFLOW)

    returncode, errors = actionlint(bad, cwd=tmp_path)
    assert returncode == 1
    assert {"shellcheck", "expression"} <= {error["kind"] for error in errors}, errors
    assert any("SC2086" in error["message"] for error in errors), "shellcheck must run on run: scripts"

    returncode, findings = zizmor(bad.parent)
    assert returncode >= 10
    assert {"unpinned-uses", "template-injection", "artipacked", "excessive-permissions"} <= {
        finding["ident"] for finding in findings
    }, described(findings)

    assert unpinned_uses(BAD_WORKFLOW) == ["- uses: actions/checkout@v7"]
    assert len(expressions_in_scripts(yaml.safe_load(BAD_WORKFLOW))) == 1


# --- Pinning, permissions, secrets --------------------------------------------------------

@pytest.mark.parametrize("path", workflow_files(), ids=lambda path: path.name)
def test_every_action_is_pinned_by_commit_with_its_version(path):
    text = path.read_text()
    assert "uses:" in text
    assert unpinned_uses(text) == []


def test_one_action_is_pinned_to_one_commit_everywhere():
    pins: dict[str, set[str]] = {}
    for path in workflow_files():
        for action, sha, version in re.findall(r"uses:\s*([\w./-]+)@([0-9a-f]{40})\s*#\s*(v[\d.]+)", path.read_text()):
            pins.setdefault(action, set()).add(f"{sha} {version}")
    assert {"actions/checkout", PULUMI_ACTION} <= set(pins)
    assert all(len(versions) == 1 for versions in pins.values()), pins


@pytest.mark.parametrize("path", workflow_files(), ids=lambda path: path.name)
def test_no_permission_at_the_top_and_the_least_per_job(path):
    document = load(path)
    assert document["permissions"] == {}
    for name, job in document["jobs"].items():
        granted = job["permissions"]
        assert granted.get("contents") == "read", name
        writes = {scope for scope, level in granted.items() if level == "write"}
        commenting = "comment-on-pr" in pulumi_step(job).get("with", {}) if name == "preview" else False
        assert writes == ({"pull-requests"} if commenting else set()), f"{path.name}:{name}: {granted}"


def test_checkout_never_keeps_the_token():
    checkouts = [step for _, _, job in all_jobs() for step in steps_of(job) if action_of(step) == "actions/checkout"]
    assert checkouts and all(step["with"]["persist-credentials"] is False for step in checkouts)


@pytest.mark.parametrize("path", workflow_files(), ids=lambda path: path.name)
def test_no_expression_inside_a_script(path):
    assert expressions_in_scripts(load(path)) == []


def test_secrets_are_the_documented_four_and_the_access_ones_stay_in_one_step():
    text = "".join(path.read_text() for path in workflow_files())
    assert set(re.findall(r"secrets\.(\w+)", text)) == SECRETS
    for file, name, job in stack_jobs():
        job_secrets = set(re.findall(r"secrets\.(\w+)", json.dumps(job.get("env", {}))))
        assert job_secrets == SECRETS - ACCESS_SECRETS, f"{file}:{name}"
        for step in steps_of(job):
            step_secrets = set(re.findall(r"secrets\.(\w+)", json.dumps(step.get("env", {}))))
            assert step_secrets == (ACCESS_SECRETS if step.get("name") == "Cluster and node access" else set())


def test_the_access_and_cleanup_steps_are_the_same_in_every_stack_job():
    for step_name in ("Cluster and node access", "Stop the SSH agent, remove the kubeconfig"):
        steps = [named_step(job, step_name) for _, _, job in stack_jobs()]
        assert len(steps) == 3 and all(step == steps[0] for step in steps), step_name
    cleanup = named_step(stack_jobs()[0][2], "Stop the SSH agent, remove the kubeconfig")
    assert cleanup["if"] == "always()"
    access = named_step(stack_jobs()[0][2], "Cluster and node access")["run"]
    assert access.index("umask 077") < access.index("$RUNNER_TEMP/kubeconfig")
    assert "ssh-add -q -" in access, "the key reaches the agent on stdin, never as a file or argument"


# --- What each workflow runs ------------------------------------------------------------------

def test_tests_run_the_readme_test_command_on_every_push_and_pull_request():
    _, test_command = readme_commands()
    document = workflow("tests")
    assert triggers(document) == {"push": None, "pull_request": None}
    (job,) = document["jobs"].values()
    assert job["runs-on"].startswith("ubuntu-")
    assert [run_lines(step) for step in steps_of(job) if "run" in step] == [[test_command]]
    (checkout,) = [step for step in steps_of(job) if action_of(step) == "actions/checkout"]
    assert checkout["with"]["fetch-depth"] == 0, "test_upgrade_real.py needs the previous release's commit"


def test_pulumi_jobs_run_on_the_self_hosted_runner_of_the_configured_label():
    for file, name, job in stack_jobs():
        assert job["runs-on"][0] == "self-hosted", f"{file}:{name}"
        assert job["runs-on"][1] == "${{ vars.PULUMI_RUNNER_LABEL || 'homelab' }}", f"{file}:{name}"


def test_every_stack_file_is_in_every_stack_matrix():
    assert stacks_from_files(), "at least one Pulumi.<stack>.yaml"
    assert {name for _, name, _ in stack_jobs()} == {"preview", "renewal"} and len(stack_jobs()) == 3
    for file, name, job in stack_jobs():
        assert sorted(job["strategy"]["matrix"]["stack"]) == stacks_from_files(), f"{file}:{name}"
        assert job["strategy"]["fail-fast"] is False


def test_one_concurrency_group_per_stack_shared_by_preview_and_renewal_and_nothing_cancelled():
    groups = {(job["concurrency"]["group"], job["concurrency"]["cancel-in-progress"]) for _, _, job in stack_jobs()}
    assert len(groups) == 1
    ((group, cancel),) = groups
    assert STACK_EXPRESSION in group and cancel is False


def test_previews_set_up_the_readme_way_and_run_pulumi_actions_for_the_stack():
    deploy, _ = readme_commands()
    assert {file for file, _, _ in preview_jobs()} == {"preview.yml", "renewal.yml"}
    for file, name, job in preview_jobs():
        setup = named_step(job, "Set up the Pulumi CLI and the virtualenv")
        assert run_lines(setup)[0] == [deploy[0], "--setup-only"], f"{file}:{name}"
        assert ".pulumi/bin/pulumi" in setup["run"] and "$GITHUB_PATH" in setup["run"]
        assert "s/^tested=//p" in named_step(job, "Read the tested Pulumi CLI version")["run"]
        inputs = pulumi_step(job)["with"]
        assert inputs["command"] == "preview" and inputs["stack-name"] == STACK_EXPRESSION
        assert inputs["pulumi-version"] == "${{ steps.cli.outputs.tested }}"
        assert inputs["refresh"] is True, "Pulumi.yaml: refresh: always"
        assert inputs["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
        assert inputs["comment-on-summary"] is True
        assert pulumi_step(job)["env"] == {
            "KUBECONFIG": "${{ runner.temp }}/kubeconfig",
            "SSH_AUTH_SOCK": "${{ runner.temp }}/ssh-agent.sock",
        }
    project = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())
    assert project["options"]["refresh"] == "always"


def test_the_pull_request_preview_comments_and_runs_for_every_program_or_stack_change():
    document = workflow("preview")
    assert set(triggers(document)) == {"pull_request"}
    patterns = [github_glob(pattern) for pattern in triggers(document)["pull_request"]["paths"]]
    watched = [
        "__main__.py", "Pulumi.yaml", "requirements.txt", ".pulumi-version", "scripts/deploy",
        ".github/workflows/preview.yml",
        *(str(path.relative_to(PROJECT_DIR)) for path in (PROJECT_DIR / "components").rglob("*.py")),
        *(path.name for path in PROJECT_DIR.glob("Pulumi.*.yaml")),
        "Pulumi.prod.yaml",
    ]
    assert [path for path in watched if not any(pattern.fullmatch(path) for pattern in patterns)] == []
    assert not any(pattern.fullmatch("README.md") or pattern.fullmatch("tests/test_config.py") for pattern in patterns)
    job = document["jobs"]["preview"]
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository", "no fork on the runner"
    assert pulumi_step(job)["with"]["comment-on-pr"] is True
    assert pulumi_step(job)["with"].get("edit-pr-comment", True) is True


def test_the_renewal_runs_monthly_and_deploys_with_the_readme_command_behind_an_environment():
    deploy, _ = readme_commands()
    document = workflow("renewal")
    assert set(triggers(document)) == {"schedule", "workflow_dispatch"}
    (schedule,) = triggers(document)["schedule"]
    minute, hour, day, month, weekday = schedule["cron"].split()
    assert minute.isdigit() and hour.isdigit() and 1 <= int(day) <= 28 and (month, weekday) == ("*", "*")

    preview, renewal = document["jobs"]["preview"], document["jobs"]["renewal"]
    assert renewal["needs"] == "preview", "the approver sees the preview first"
    assert renewal["environment"] == "production" and "environment" not in preview
    deploy_steps = [step for step in steps_of(renewal) if any(line[:1] == deploy[:1] for line in run_lines(step))]
    assert len(deploy_steps) == 1
    (line,) = run_lines(deploy_steps[0])
    assert line == [deploy[0], "$STACK", "--yes", "--skip-preview"]
    assert deploy_steps[0]["env"]["STACK"] == STACK_EXPRESSION


# --- The set-up command the previews call ------------------------------------------------------

def test_deploy_setup_only_installs_the_cli_and_the_venv_and_touches_no_stack(tmp_path):
    for directory in ("/usr/bin", "/bin"):
        assert not Path(directory, "pulumi").exists(), "a real pulumi in /usr/bin would take part in the test"
    bed = Bed(tmp_path)
    result = deployed(bed.run("--setup-only"))
    assert bed.calls("installer") == [
        ["--version", TESTED, "--install-root", str(bed.project / ".pulumi"), "--no-edit-path"]
    ]
    assert (bed.project / ".pulumi" / "bin" / "pulumi").exists(), "the path the workflows put on GITHUB_PATH"
    assert bed.requirement_installs() == 1
    assert bed.calls("pulumi-installed") == [], "no stack select, no up"
    assert "Set up: Pulumi CLI" in result.stdout

    refused = bed.run("--setup-only", "dev")
    assert refused.returncode != 0 and "--setup-only takes no other arguments" in refused.stderr
    assert bed.calls("pulumi-installed") == []
