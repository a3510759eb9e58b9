"""The container engine of the smoke run, and the host state it must leave as it found it.

Debian's docker.io and docker-compose are installed when missing. The run starts a dockerd of its own and
stops it by PID: `--bridge=none` (no docker0), `--iptables=false` (no firewall rules), `--ip-forward=false`
(no IP forwarding); with the defaults dockerd rewrites the firewall and turns forwarding on, and both stay
so after it stops. Its images stay in DATA_ROOT between runs (the warm path); its API socket is SOCKET, so it
never meets another engine on the machine. A daemon left running by a run that was killed is found by its
pidfile and reused; what a killed daemon left behind (pidfile, socket, mounts) is cleared before a new one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HOME = Path(os.environ.get("PORTAL_DOCKER_HOME", "/var/lib/portal-docker"))
DATA_ROOT = HOME / "data"
EXEC_ROOT = Path(os.environ.get("PORTAL_DOCKER_EXEC_ROOT", "/run/portal-docker"))
SOCKET = EXEC_ROOT.with_name(EXEC_ROOT.name + ".sock")
PIDFILE = EXEC_ROOT.with_name(EXEC_ROOT.name + ".pid")
DOCKERD_FLAGS = ["--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"]
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# Kernel settings a container engine is known to change (forwarding, bridge netfilter, localnet routing).
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)
# Binary -> Debian package.
ENGINE_PACKAGES = {"dockerd": "docker.io", "docker": "docker.io", "docker-compose": "docker-compose"}


class SmokeError(RuntimeError):
    pass


def run(
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    log: Path | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run `command`, its output captured (and appended to `log`); SmokeError with the output's tail when it
    fails and `check`, or when it runs past `timeout`."""
    try:
        done = subprocess.run(
            command,
            env=env,
            cwd=cwd,
            timeout=timeout,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise SmokeError(f"{' '.join(command)}: still running after {timeout:.0f} s") from error
    if log is not None:
        with log.open("a") as file:
            file.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}[exit {done.returncode}]\n")
    if check and done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise SmokeError(f"{' '.join(command)} failed with {done.returncode}:\n{tail}")
    return done


def process_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split(" ", 1)[0] != "Z"


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (this engine's containerd and shims name its exec root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if any(text in arg for arg in process_argv(int(entry.name))) and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


# ---- host state --------------------------------------------------------------------------------------------


def firewall_rules() -> dict[str, str]:
    """The rule sets of every firewall tool present, without the dump's timestamp comments."""
    rules = {}
    for tool in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
        if shutil.which(tool[0]):
            done = run(tool, check=False, timeout=30)
            text = done.stdout if done.returncode == 0 else f"[{tool[0]} failed: {done.stderr.strip()}]"
            rules[" ".join(tool)] = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return rules


def sysctls() -> dict[str, str]:
    values = {}
    for name in SYSCTLS:
        try:
            values[name.replace("/", ".")] = Path("/proc/sys", name).read_text().strip()
        except OSError:
            values[name.replace("/", ".")] = "absent"
    return values


def our_mounts() -> list[str]:
    """Mount points under this engine's directories (none once it has stopped)."""
    roots = (str(HOME), str(EXEC_ROOT))
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # octal escapes such as \040
        if any(point == root or point.startswith(root + "/") for root in roots):
            points.append(point)
    return points


@dataclass(frozen=True)
class HostState:
    firewall: dict[str, str]
    sysctls: dict[str, str]
    interfaces: tuple[str, ...]
    mounts: tuple[str, ...]

    @classmethod
    def capture(cls) -> HostState:
        interfaces = tuple(sorted(os.listdir("/sys/class/net")))
        return cls(firewall_rules(), sysctls(), interfaces, tuple(our_mounts()))

    def differences(self, later: HostState) -> list[str]:
        found = []
        for tool in sorted(set(self.firewall) | set(later.firewall)):
            if self.firewall.get(tool, "") != later.firewall.get(tool, ""):
                found.append(f"firewall changed ({tool})")
        for name, value in self.sysctls.items():
            if later.sysctls.get(name) != value:
                found.append(f"sysctl {name}: {value} -> {later.sysctls.get(name)}")
        if self.interfaces != later.interfaces:
            found.append(f"network interfaces: {list(self.interfaces)} -> {list(later.interfaces)}")
        if later.mounts:
            found.append(f"mounts left under {HOME} / {EXEC_ROOT}: {list(later.mounts)}")
        return found

    def as_json(self) -> dict:
        return {
            "firewall_rules": {tool: len(text.splitlines()) for tool, text in self.firewall.items()},
            "sysctls": self.sysctls,
            "interfaces": list(self.interfaces),
            "mounts": list(self.mounts),
        }


# ---- packages ----------------------------------------------------------------------------------------------


def apt_install(packages: list[str], log: Path) -> None:
    """Install Debian packages; their services are never started (a default dockerd would rewrite the
    firewall): a policy-rc.d that refuses is put in place for the install when the machine has none."""
    if os.geteuid() != 0:
        raise SmokeError(f"{', '.join(packages)} missing, and installing them needs root")
    policy = Path("/usr/sbin/policy-rc.d")
    added_policy = not policy.exists()
    if added_policy:
        policy.write_text("#!/bin/sh\n# added by tests/docker_smoke for one apt-get install\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        if run(install, env=env, log=log, check=False, timeout=600).returncode != 0:
            run(["apt-get", "update", "-q"], env=env, log=log, timeout=300)
            run(install, env=env, log=log, timeout=600)
    finally:
        if added_policy:
            policy.unlink(missing_ok=True)


def ensure_binaries(binaries: dict[str, str], log: Path) -> list[str]:
    """Install the packages of the binaries that are missing; returns the packages installed."""
    missing = sorted({package for binary, package in binaries.items() if not shutil.which(binary)})
    if missing:
        apt_install(missing, log)
    return missing


# ---- the daemon --------------------------------------------------------------------------------------------


def our_dockerd_pids() -> list[int]:
    """dockerd processes of this engine (its exec root), whether or not its pidfile still names them."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = process_argv(int(entry.name))
            if argv and Path(argv[0]).name == "dockerd" and f"--exec-root={EXEC_ROOT}" in argv:
                if alive(int(entry.name)):
                    found.append(int(entry.name))
    return found


class Engine:
    """This run's dockerd: started (or found running from a killed run) and stopped by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.pid: int | None = None
        self.process: subprocess.Popen | None = None
        self.reused = False
        self.cleared: list[str] = []  # what a killed earlier run left and this one removed
        self.started_at = time.time()
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{SOCKET}",
            # The legacy builder: what the daemon (20.10) and docker-compose v1 speak without buildx.
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
        }
        self.env.pop("DOCKER_CONTEXT", None)

    def docker(self, *args: str, timeout: float = 300, check: bool = True, log: Path | None = None):
        return run(["docker", *args], env=self.env, timeout=timeout, check=check, log=log)

    def answers(self) -> bool:
        try:
            done = self.docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False)
        except SmokeError:  # no answer within the timeout
            return False
        return done.returncode == 0

    def wait_answering(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process is not None and self.process.poll() is not None:
                raise SmokeError(
                    f"dockerd exited with {self.process.returncode}: see {self.log_dir}/dockerd.log"
                )
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def start(self) -> None:
        running = our_dockerd_pids()
        if running and self.wait_answering(START_TIMEOUT_S if len(running) == 1 else 0):
            self.pid, self.reused = running[0], True
            self.cleared.append(f"reused dockerd {self.pid} left running by an earlier run")
            return
        for pid in running:  # ours, but not answering on its socket: stopped, to start afresh
            self.pid = pid
            self.stop()
            self.cleared.append(f"stopped dockerd {pid} that did not answer")
        self.clear_leftovers()
        HOME.mkdir(parents=True, exist_ok=True)
        EXEC_ROOT.mkdir(parents=True, exist_ok=True)
        command = [
            "dockerd",
            *DOCKERD_FLAGS,
            f"--data-root={DATA_ROOT}",
            f"--exec-root={EXEC_ROOT}",
            f"--pidfile={PIDFILE}",
            f"--host=unix://{SOCKET}",
        ]
        with (self.log_dir / "dockerd.log").open("ab") as log:
            # A session of its own: a Ctrl-C in the terminal reaches this driver, which stops it in order.
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.process.pid
        if not self.wait_answering(START_TIMEOUT_S):
            raise SmokeError(f"dockerd did not answer on {SOCKET} within {START_TIMEOUT_S} s")

    def clear_leftovers(self) -> None:
        """What a dockerd killed without its shutdown left (called only while no dockerd of this engine runs):
        its pidfile and socket go. Its containers may still run (their shims outlive it) with their mounts:
        the new daemon takes them over and, without live restore, stops and unmounts them itself."""
        for path in (PIDFILE, SOCKET):
            if path.exists():
                path.unlink()
                self.cleared.append(f"removed stale {path}")
        shims = processes_mentioning(str(EXEC_ROOT))
        if shims:
            self.cleared.append(f"{len(shims)} processes of a killed dockerd's containers, taken over")

    def stop(self) -> list[str]:
        """Stop the daemon by PID (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and any containerd of its exec
        root that outlives it; returns what did not go as it should."""
        problems = []
        if self.pid is None:
            return problems
        if alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            if self.process is not None:
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    problems.append(f"dockerd {self.pid} ignored SIGTERM for {STOP_TIMEOUT_S} s: killed")
                    self.process.kill()
                    self.process.wait()
            elif not wait_gone(self.pid, STOP_TIMEOUT_S):
                problems.append(f"dockerd {self.pid} ignored SIGTERM for {STOP_TIMEOUT_S} s: killed")
                os.kill(self.pid, signal.SIGKILL)
                wait_gone(self.pid, 10)
        for pid in processes_mentioning(str(EXEC_ROOT)):
            if not wait_gone(pid, 10):
                problems.append(f"{' '.join(process_argv(pid))[:120]} ({pid}) outlived dockerd: stopped")
                os.kill(pid, signal.SIGTERM)
                wait_gone(pid, 10)
        # dockerd leaves the bind mount of the host's network namespace (exec root netns/default) behind.
        self.unmount_all()
        self.pid = None
        return problems

    def unmount_all(self) -> None:
        for point in sorted(our_mounts(), key=len, reverse=True):
            if run(["umount", point], check=False, timeout=30).returncode != 0:
                run(["umount", "-l", point], check=False, timeout=30)


def compose_command(engine: Engine, log: Path) -> list[str]:
    """docker-compose (v1, Debian's) or the `docker compose` plugin; installs docker-compose when neither."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if engine.docker("compose", "version", check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    apt_install(["docker-compose"], log)
    return ["docker-compose"]
