"""A real two-node Slurm cluster on this one machine for the tests: munged, slurmctld and two slurmd daemons from
Debian's `slurm-wlm` (`slurmd -N kn1`, `-N kn2`: Slurm's way of emulating nodes, each with half the cores, reached
at 127.0.0.1 on its own port), started in a temporary folder on free ports (its own `slurm.conf`, named by
SLURM_CONF) and stopped afterwards. `sbatch --nodes=2`, `srun`, `scancel` and job states (`scontrol show job`; no
accounting daemon) then work as on a cluster. Credentials live 5 s (`cred_expire`, 120 s by default), which is
also how long Slurm holds a requeued job back. CI installs the package (.ci/run); elsewhere the tests skip, naming
what is missing."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel")
NODES = ("kn1", "kn2")


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up on Linux). A port the kernel handed out and
    took back may be handed out again: once srun took the rendezvous port for its own I/O listener, and both
    torchruns waited on srun's socket forever (LOG.md, session 16)."""
    rng = random.Random()
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low, high = 20000, int(ephemeral.read_text().split()[0]) if ephemeral.is_file() else 32768
    for _ in range(200):
        port = rng.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


def _memory_mb() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


@dataclass
class Slurm:
    root: Path
    env: dict[str, str]

    def sbatch(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
        """Submit; returns the job id."""
        r = subprocess.run(
            ["sbatch", "--parsable", *args], capture_output=True, text=True, env=env or self.env, cwd=cwd, check=False
        )
        assert r.returncode == 0, r.stderr
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, RestartCnt, ExitCode, ...)."""
        out = subprocess.run(
            ["scontrol", "show", "job", str(job_id)], capture_output=True, text=True, env=self.env, check=True
        ).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout: float = 300, states: tuple[str, ...] = ("COMPLETED", "FAILED")) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.job(job_id)["JobState"]) not in states and state not in ("CANCELLED", "TIMEOUT"):
            assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout} s"
            time.sleep(0.2)
        return state

    def wait_chain(self, jobs: list[int], timeout: float = 600) -> str:
        """Jobs that each wait for the one before: "COMPLETED" once the last has completed, else the first that
        failed or that waits on a failed one (Slurm leaves such a job pending for ever, so a plain wait would not
        end) with its state and reason."""
        deadline = time.monotonic() + timeout
        while (last := self.job(jobs[-1])["JobState"]) != "COMPLETED":
            for j in jobs:
                info = self.job(j)
                ended = info["JobState"] in ("FAILED", "CANCELLED", "TIMEOUT")
                if ended or info["Reason"] == "DependencyNeverSatisfied":
                    return f"job {j}: {info['JobState']} ({info['Reason']})"
            assert time.monotonic() < deadline, f"job {jobs[-1]} still {last} after {timeout} s"
            time.sleep(0.5)
        return last

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, check=True).stdout


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        pytest.skip(f"Slurm is not installed here ({', '.join(missing)} missing): apt-get install slurm-wlm")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; run these tests as root (CI does)")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log", "munge", "run"):
        (root / d).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    socket_path = root / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    cpus, mem = max(1, (os.cpu_count() or 2) // 2), _memory_mb() * 4 // 10
    nodes = "\n".join(
        f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus} RealMemory={mem}"
        for n in NODES
    )
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=kamado-test
SlurmctldHost={host}
SlurmctldPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={socket_path},cred_expire=5
SlurmUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=30
MinJobAge=3600
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    sbin = "/usr/sbin"
    procs = []
    try:
        subprocess.run(
            [
                shutil.which("munged") or f"{sbin}/munged",
                f"--socket={socket_path}",
                f"--pid-file={root}/run/munged.pid",
                f"--log-file={root}/log/munged.log",
                f"--seed-file={root}/munge/seed",
                f"--key-file={key}",
                "--force",
            ],
            check=True,
            env=env,
        )
        log = open(root / "log" / "daemons.out", "ab")  # noqa: SIM115 (closed with the daemons)
        for n in NODES:
            (root / "spool" / n).mkdir()
        for cmd in (["slurmctld", "-D", "-i"], *(["slurmd", "-D", "-N", n] for n in NODES)):
            exe = shutil.which(cmd[0]) or f"{sbin}/{cmd[0]}"
            procs.append(subprocess.Popen([exe, *cmd[1:]], env=env, stdout=log, stderr=log))
            time.sleep(1)
        slurm = Slurm(root, env)
        deadline = time.monotonic() + 60
        while slurm.run("sinfo", "-h", "-N", "-o", "%t").split() != ["idle"] * len(NODES):
            assert all(p.poll() is None for p in procs), (root / "log" / "daemons.out").read_text()[-2000:]
            assert time.monotonic() < deadline, "the two-node Slurm cluster did not come up in 60 s"
            time.sleep(0.2)
        yield slurm
    finally:
        if procs:  # a failed test may leave a job running: end it while the daemons can, or it outlives them
            subprocess.run(["scancel", "--full", "--partition=debug"], env=env, capture_output=True, check=False)
            deadline = time.monotonic() + 30
            while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        pid = root / "run" / "munged.pid"
        if pid.is_file():
            os.kill(int(pid.read_text()), 15)
