"""Kills a node step's script, or the installer of a node's scripts, at its k-th external command.

The command is run exactly as the program declared it, on a real test host over real SSH: the
text pulumi-command would send (``sh <scripts dir>/run <step> <action> [<digest>]``), or the
line the NodeScripts provider sends (``sh -s``, the installer on stdin). Two things are put in
front of it: ``TMPDIR`` (so the scratch directories a killed script cannot clean up land in this
test's own directory) and a ``PATH`` whose first directory holds one wrapper per external tool
the scripts use; the ``sh`` and every script it starts inherit both. Every wrapper counts its
call in a counter file; at the chosen call it sends SIGKILL to the whole process group of the
SSH session (``kill -9 0``: the ``sh`` running the script, its subshells and the tool), either
BEFORE the tool runs or AFTER it finished. Nothing in the script gets to clean up, as when a
connection drops or a machine loses power mid-run.

A redirection such as
``cat "$tmp" > "$target"`` is opened by the shell before ``cat`` starts: killing "before cat"
is killing right after the shell truncated the target.

The host side never trusts the node's view of processes: the node has its own PID namespace
but the machine's /proc, so the kill is ``kill 0`` from inside, never a PID looked up in /proc.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import paramiko

from testbed.sshexec import ClientKey, connect, run_on_client
from testbed.sshnodes import TestNode

# Every external program the node scripts use to write, remove, or change a file, and the ones
# that act on what was written (the trust store rebuild, the k3s restart). A wrapper is made only
# for the ones the node actually has: a wrapper for a missing tool would change ``command -v``.
# Read-only tools (cmp, stat, awk, tail...) are not cut: the state a kill leaves around them is
# the state a kill leaves after the previous or before the next wrapped call, and the shell's
# own writes (redirections, ``: > file``) always sit between two such calls or open one of them.
TOOLS = (
    "cat", "chmod", "chown", "cp", "dd", "install", "ln", "mkdir", "mktemp", "mv", "python3",
    "rc-service", "restorecon", "rm", "rmdir", "systemctl", "tee", "touch", "truncate",
    "update-ca-certificates", "update-ca-trust",
)

# The init tools' queries read and change nothing (the restart step asks several before and
# after its one restart): like the read-only tools above, they are run uncut and uncounted.
READ_ONLY_CALLS = {
    "systemctl": 'case ${{1:-}} in show|is-active|is-enabled|list-unit-files) exec {run} "$@" ;; esac\n',
    "rc-service": 'case ${{1:-}}:${{2:-}} in --exists:*|-e:*|*:status) exec {run} "$@" ;; esac\n',
}

_WRAPPER = """\
#!/bin/sh
# interruption wrapper for {tool}: count the call, maybe SIGKILL the whole session before/after it
ctl={ctl}
PATH=${{PATH#{bin}:}}
export PATH
{read_only}exec 9>>"$ctl/lock"
flock 9
read -r n < "$ctl/count"
n=$((n + 1))
printf '%s\\n' "$n" > "$ctl/count"
printf '%s {tool} %s\\036' "$n" "$*" >> "$ctl/calls"
flock -u 9
exec 9>&-
read -r kill_at < "$ctl/kill_at"
read -r when < "$ctl/when"
if [ "$n" = "$kill_at" ] && [ "$when" = before ]; then
  : > "$ctl/killed"
  kill -9 0
fi
{run} "$@"
status=$?
if [ "$n" = "$kill_at" ] && [ "$when" = after ]; then
  : > "$ctl/killed"
  kill -9 0
fi
exit $status
"""


@dataclass
class Run:
    """One run of a step's command, maybe cut short."""

    killed: bool
    exit_status: int
    stdout: str
    stderr: str
    calls: list[str]  # "n tool args..." in call order, args shortened

    def describe(self, k: int) -> str:
        return self.calls[k - 1] if 0 < k <= len(self.calls) else f"call {k}"


class Interrupter:
    """Per-node wrappers and control files, in a directory of this test's own under /tmp."""

    def __init__(self, node: TestNode, root: Path, stand_ins: dict[str, str] | None = None):
        """``stand_ins`` maps a tool to a script run in its place (still counted and cut)."""
        self.node = node
        self.client: paramiko.SSHClient | None = None
        self.root = root
        self.bin = root / "bin"
        self.ctl = root / "ctl"
        self.tmp = root / "scratch"
        for d in (self.bin, self.ctl, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.tmp.chmod(0o1777)
        present = node.run_local(
            ["sh", "-c", 'for t; do command -v "$t" >/dev/null 2>&1 && echo "$t"; done', "sh", *TOOLS]
        ).stdout.decode().split()
        self.tools = tuple(present)
        stand_ins = stand_ins or {}
        (root / "stand-ins").mkdir(exist_ok=True)
        for tool in self.tools:
            run = tool
            if tool in stand_ins:
                stand_in = root / "stand-ins" / tool
                stand_in.write_text(stand_ins[tool])
                stand_in.chmod(0o755)
                run = shlex.quote(str(stand_in))
            path = self.bin / tool
            read_only = READ_ONLY_CALLS.get(tool, "").format(run=run)
            path.write_text(_WRAPPER.format(tool=tool, run=run, ctl=shlex.quote(str(self.ctl)), bin=str(self.bin),
                                            read_only=read_only))
            path.chmod(0o755)
        (self.ctl / "lock").touch()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def command_for(self, command: str) -> str:
        """The declared command, run with the wrappers first on PATH (root sessions only): ``sh``
        with a script file (the steps' ``run`` helper) or ``-s`` (the script on stdin)."""
        assert not command.startswith("sudo"), "sudo resets PATH: interrupt root sessions only"
        assert command.startswith("sh "), command[:40]
        return f"TMPDIR={shlex.quote(str(self.tmp))} PATH={shlex.quote(str(self.bin))}:\"$PATH\" {command}"

    def run(self, command: str, client_key: ClientKey, *, kill_at: int = 0, when: str = "before", stdin: str = "") -> Run:
        """Runs ``command`` in one session, ``stdin`` written to it then closed (as pulumi-command
        and the NodeScripts provider do; ``sh -s`` reads its script from there)."""
        assert when in ("before", "after")
        (self.ctl / "count").write_text("0\n")
        (self.ctl / "kill_at").write_text(f"{kill_at}\n")
        (self.ctl / "when").write_text(f"{when}\n")
        (self.ctl / "calls").write_bytes(b"")
        (self.ctl / "killed").unlink(missing_ok=True)
        # One connection per host, one fresh session (exec request) per run, as the provider does.
        if self.client is None:
            self.client = connect(self.node, pkey=client_key.pkey())
        status, out, err = run_on_client(self.client, self.command_for(command), stdin=stdin)
        calls = [_shorten(c) for c in (self.ctl / "calls").read_bytes().decode(errors="replace").split("\x1e") if c]
        return Run((self.ctl / "killed").exists(), status, out.decode(errors="replace"), err.decode(errors="replace"), calls)


def _shorten(call: str) -> str:
    text = re.sub(r"\s+", " ", call).strip()
    return text if len(text) <= 140 else text[:137] + "..."


# ----------------------------------------------------------------------------- node state

# Everything the steps can touch, saved and put back between cases (the node is reused).
# /etc/ssl/certs: only the bundle, the one file the update-ca-certificates stand-in writes.
STATE_DIRS = ("etc/rancher", "var/lib/k3s-registry", "etc/ssl/certs/ca-certificates.crt", "usr/local/share/ca-certificates")


def save_state(node: TestNode, archive: Path) -> None:
    """Archives the node's step-touched directories (host path ``archive``) and its /etc/hosts."""
    script = (
        "cd / && set -- && for d in " + " ".join(STATE_DIRS) + '; do [ -e "$d" ] && set -- "$@" "$d"; done; '
        'tar -cpf "$0" "$@" && cat /etc/hosts > "$0.hosts"'
    )
    result = node.run_local(["sh", "-c", script, str(archive)])
    assert result.returncode == 0, result.stderr.decode()


def restore_state(node: TestNode, archive: Path) -> None:
    """Puts back exactly what ``save_state`` saw; /etc/hosts is a bind mount: rewritten in place."""
    script = (
        "set -e\n"
        "rm -rf /etc/rancher /var/lib/k3s-registry /etc/ssl/certs/ca-certificates.crt\n"
        "find /usr/local/share/ca-certificates -mindepth 1 -delete\n"
        "rm -f /etc/.k3s-registry.* /etc/.k3s-registry-*\n"  # scratch and rollback copies beside /etc/hosts
        'tar -C / -xpf "$0"\n'
        'cat "$0.hosts" > /etc/hosts\n'
    )
    result = node.run_local(["sh", "-c", script, str(archive)])
    assert result.returncode == 0, result.stderr.decode()

