"""A real one-node SLURM cluster on localhost for tests: Debian's slurmctld, slurmd and munge.

`SlurmCluster.start(folder)` installs the packages when they are missing (apt-get, as root),
writes a slurm.conf for this machine under `folder`, starts munged, slurmctld and slurmd,
and waits for the node to be idle; `stop()` ends the daemons. Client commands reach this
cluster through `SLURM_CONF` in `env`. Where the packages cannot be installed or the daemons
do not come up, `start` raises `SlurmUnavailable` with the reason (tests skip on it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch")

CONF = """\
ClusterName=megallmtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort={port}
SlurmdPort={port_d}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
# a requeued job starts within seconds of its hold (cred_expire), not at the next 60 s scheduling pass
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


class SlurmUnavailable(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_packages() -> None:
    """Debian's SLURM and munge, unless already there."""
    if all(Path(p).exists() for p in DAEMONS):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable("SLURM is not installed and this is not a Debian machine run as root: "
                               f"install {' '.join(PACKAGES)} to run this test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                                  *PACKAGES]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0 and command[1] == "install":
            raise SlurmUnavailable(f"apt-get could not install {' '.join(PACKAGES)}: "
                                   f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")


@dataclass
class SlurmCluster:
    folder: Path
    env: dict

    @classmethod
    def start(cls, folder: Path) -> "SlurmCluster":
        install_packages()
        host = socket.gethostname().split(".")[0]
        for sub in ("state", "spool"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf = folder / "slurm.conf"
        port = _free_port()
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 8 // 10
        conf.write_text(CONF.format(host=host, folder=folder, port=port, port_d=_free_port(), cpus=os.cpu_count(),
                                    memory_mb=memory_mb))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        cluster = cls(folder, env)
        cluster._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([f"/usr/sbin/{daemon}", "-f", str(conf)], env=env, check=True, timeout=60)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        cluster.stop()
        raise SlurmUnavailable(f"the SLURM node did not become idle (sinfo: {state!r}); see {folder}/slurmd.log")

    def _start_munge(self) -> None:
        if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
            return  # a munged already runs
        for path in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(path).mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True, timeout=30)

    def run(self, *command: str, cwd: Path | None = None, extra_env: dict | None = None) -> str:
        result = subprocess.run(command, env={**self.env, **(extra_env or {})}, cwd=cwd, capture_output=True,
                                text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def job_state(self, job_id: str) -> str:
        return self.run("scontrol", "show", "job", job_id, "-o").split("JobState=")[1].split()[0]

    def stop(self) -> None:
        for daemon in ("slurmd", "slurmctld"):
            pid_file = self.folder / f"{daemon}.pid"
            if pid_file.is_file():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
