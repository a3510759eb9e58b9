"""The base images of the smoke run: the official ones where they can be pulled, else local stand-ins.

A stand-in is built from Debian packages (docker/standins/<name>/Dockerfile) on a base made here: a
`debootstrap --variant=minbase bookworm` from the apt mirror the machine already uses, imported with
`tar | docker import`. Base and stand-ins stay in the engine's data root and are rebuilt only when their
Dockerfiles, scripts or the base change (a digest label), so a warm run builds nothing of them.
Setting PYTHON_IMAGE / POSTGRES_IMAGE / REDIS_IMAGE picks an image and skips all of this for it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference.resources import REPO_ROOT
from tests.docker_smoke.engine import HOME, Engine, SmokeError, ensure_binaries, our_mounts, run

STANDINS_DIR = REPO_ROOT / "docker" / "standins"
BASE_TAG = "portal-base:bookworm"
SUITE = "bookworm"
PULL_TIMEOUT_S = 20
DIGEST_LABEL = "portal.smoke.digest"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass(frozen=True)
class BaseImage:
    variable: str  # the compose / Dockerfile variable that names it
    official: str
    standin: str  # tag of the local stand-in
    context: str  # docker/standins/<context>


BASE_IMAGES = (
    BaseImage("PYTHON_IMAGE", "python:3.11-slim", "portal-standin/python:3.11", "python"),
    BaseImage("POSTGRES_IMAGE", "postgres:16", "portal-standin/postgres:15", "postgres"),
    BaseImage("REDIS_IMAGE", "redis:7", "portal-standin/redis:7", "redis"),
)


def image_id(engine: Engine, ref: str) -> str | None:
    done = engine.docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else None


def image_digest_label(engine: Engine, ref: str) -> str | None:
    done = engine.docker(
        "image", "inspect", "--format", f'{{{{ index .Config.Labels "{DIGEST_LABEL}" }}}}', ref, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def try_pull(engine: Engine, ref: str, log: Path) -> bool:
    try:
        return engine.docker("pull", "-q", ref, timeout=PULL_TIMEOUT_S, check=False, log=log).returncode == 0
    except SmokeError:  # ran past the timeout: a registry that does not answer
        return False


def resolve_base_images(engine: Engine, log_dir: Path) -> dict[str, dict[str, str]]:
    """{variable: {"image": ref, "source": how it was found}} for the three base images."""
    chosen: dict[str, dict[str, str]] = {}
    wanted = []
    for base in BASE_IMAGES:
        if os.environ.get(base.variable):
            chosen[base.variable] = {"image": os.environ[base.variable], "source": "from the environment"}
        elif image_id(engine, base.official):
            chosen[base.variable] = {"image": base.official, "source": "official, present"}
        else:
            wanted.append(base)
    log = log_dir / "pull.log"
    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = pool.map(lambda base: try_pull(engine, base.official, log), wanted)
        pulled = dict(zip(wanted, outcomes, strict=True))
    standins = [base for base in wanted if not pulled[base]]
    for base in wanted:
        if pulled[base]:
            chosen[base.variable] = {"image": base.official, "source": "official, pulled"}
    if standins:
        base_id = ensure_base(engine, log_dir / "base.log")
        for base in standins:
            source = ensure_standin(engine, base, base_id, log_dir / f"standin-{base.context}.log")
            chosen[base.variable] = {"image": base.standin, "source": source}
    return chosen


def files_digest(paths: list[Path], *extra: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for value in extra:
        digest.update(value.encode() + b"\0")
    return digest.hexdigest()[:16]


def ensure_standin(engine: Engine, base: BaseImage, base_id: str, log: Path) -> str:
    context = STANDINS_DIR / base.context
    digest = files_digest([path for path in context.rglob("*") if path.is_file()], base_id)
    if image_digest_label(engine, base.standin) == digest:
        return "stand-in, built before"
    engine.docker(
        "build",
        "--network=host",
        f"--build-arg=BASE_IMAGE={BASE_TAG}",
        f"--label={DIGEST_LABEL}={digest}",
        f"--tag={base.standin}",
        str(context),
        timeout=900,
        log=log,
    )
    return "stand-in, built now"


# ---- the Debian base ---------------------------------------------------------------------------------------


def apt_entries() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source of the machine's apt, one-line and deb822 formats."""
    files: list[Path] = []
    for source in APT_SOURCES:
        if source.is_file():
            files.append(source)
        elif source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in {".list", ".sources"})
    entries = []
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line and not line.startswith(("#", " ", "\t")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                    for uri in fields.get("uris", "").split():
                        entries.append((uri, fields.get("suites", "").split()))
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


def debian_mirrors() -> tuple[str, str]:
    """(archive, security archive) as the machine's apt uses them; deb.debian.org where it names none."""
    archive = security = None
    for uri, suites in apt_entries():
        if any(suite.endswith("-security") for suite in suites):
            security = security or uri
        elif any(suite.split("-")[0] in {SUITE, "stable"} for suite in suites) or "debian" in uri:
            archive = archive or uri
    return archive or "http://deb.debian.org/debian", security or "http://deb.debian.org/debian-security"


def ensure_base(engine: Engine, log: Path) -> str:
    """The minimal Debian base image; made with debootstrap when missing. Returns its image id."""
    archive, security = debian_mirrors()
    digest = files_digest([], SUITE, archive, security, "minbase")
    if image_digest_label(engine, BASE_TAG) == digest:
        return image_id(engine, BASE_TAG) or ""
    ensure_binaries({"debootstrap": "debootstrap"}, log)
    root = HOME / "bootstrap" / "rootfs"
    remove_tree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", SUITE, str(root), archive], timeout=1200, log=log)
    (root / "etc/apt/sources.list").write_text(
        f"deb {archive} {SUITE} main\n"
        f"deb {archive} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )
    # As Debian's official images: no service starts inside a build, no apt caches in the image.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / cache).glob("*"):
            if entry.is_file():
                entry.unlink()
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            [
                "docker",
                "import",
                "--change",
                f"ENV PATH={BASE_PATH}",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["bash"]',
                "--change",
                f"LABEL {DIGEST_LABEL}={digest}",
                "-",
                BASE_TAG,
            ],  # fmt: skip
            stdin=tar.stdout,
            env=engine.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        tar.stdout.close()
        tar.wait()
    with log.open("a") as file:
        file.write(f"$ tar | docker import - {BASE_TAG}\n{imported.stdout}{imported.stderr}\n")
    if imported.returncode != 0 or tar.returncode != 0:
        raise SmokeError(f"importing the debootstrap root failed: {imported.stderr[-2000:]}")
    remove_tree(root)
    return image_id(engine, BASE_TAG) or ""


def remove_tree(root: Path) -> None:
    """Remove a debootstrap root; first what a killed debootstrap left mounted inside it (proc, sys)."""
    if not root.exists():
        return
    for point in sorted((p for p in our_mounts() if p.startswith(str(root) + "/")), key=len, reverse=True):
        if run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point], check=False)
    still = [p for p in our_mounts() if p.startswith(str(root) + "/")]
    if still:
        raise SmokeError(f"cannot remove {root}: still mounted {still}")
    shutil.rmtree(root)
