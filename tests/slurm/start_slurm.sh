#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for tests/test_slurm.py.
#
#   tests/slurm/start_slurm.sh STATE_DIR     # start; prints the node line of sinfo
#   tests/slurm/stop_slurm.sh STATE_DIR      # stop, and remove what start made
#
# munged, slurmctld and slurmd run as plain background daemons (no systemd),
# on 127.0.0.1, with a minimal slurm.conf in STATE_DIR: select/cons_tres, the
# node's real CPUs and memory (slurmd -C), no accounting, state and spool
# folders in STATE_DIR. The controller serves the configuration ("configless"):
# job steps find it through the /run/slurm/conf link that slurmd makes, as on a
# cluster where SLURM_CONF is not set. Ports: SLURMCTLD_PORT (default 6817) and
# SLURMD_PORT (6818). Only one such cluster can run on a machine at a time.
#
# When slurm-wlm or munge is missing it is installed with apt-get (as root).
# Exit status: 0 started; 3 SLURM cannot be installed or used here (the reason
# is on stderr); 1 it was installed but did not start (see STATE_DIR/*.log).
set -euo pipefail

state=${1:?usage: start_slurm.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
ctld_port=${SLURMCTLD_PORT:-6817}
slurmd_port=${SLURMD_PORT:-6818}

cannot() {
    echo "cannot run SLURM here: $*" >&2
    exit 3
}

# --- install ------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || cannot "slurm-wlm and munge are not installed and we are not root"
    command -v apt-get >/dev/null || cannot "slurm-wlm and munge are not installed and there is no apt-get"
    echo "installing slurm-wlm and munge with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge; } \
        >"$state/apt.log" 2>&1 || cannot "apt-get install slurm-wlm munge failed (see $state/apt.log)"
fi
[ "$(id -u)" = 0 ] || cannot "starting slurmd needs root"
if [ -e /etc/slurm/slurm.conf ] || [ -e /etc/slurm-llnl/slurm.conf ]; then
    cannot "this machine has its own SLURM configuration (/etc/slurm/slurm.conf); the test starts a cluster only where there is none"
fi
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    cannot "slurmctld or slurmd is already running on this machine"
fi

# --- munge: reuse a running munged, else start one with a key of our own ------------
mkdir -p "$state/munge"
chmod 755 "$state"
if ! (munge -n </dev/null | unmunge >/dev/null) 2>/dev/null; then
    mkdir -p /run/munge
    chmod 755 /run/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$state/munge/munge.key"
    munged --key-file="$state/munge/munge.key" --socket=/run/munge/munge.socket.2 \
        --pid-file="$state/munged.pid" --seed-file="$state/munge/munged.seed" \
        --log-file="$state/munged.log" --force
    (munge -n </dev/null | unmunge >/dev/null) || { echo "munged did not start" >&2; exit 1; }
fi

# --- slurm.conf ---------------------------------------------------------------------
node=$(slurmd -C | head -n 1)
cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
[ -n "$cpus" ] && [ -n "$memory" ] || { echo "cannot read CPUs and memory from: $node" >&2; exit 1; }
mkdir -p "$state/statesave" "$state/spool"
cat >"$state/slurm.conf" <<CONF
ClusterName=cellsegtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmctldParameters=enable_configless
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$state/statesave
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=5
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# --- daemons ------------------------------------------------------------------------
rm -f /run/slurm/conf
slurmctld -f "$state/slurm.conf" -i
slurmd --conf-server "127.0.0.1:$ctld_port" -N localhost
export SLURM_CONF=$state/slurm.conf
for _ in $(seq 1 60); do
    if [ "$(sinfo -h -n localhost -o %T 2>/dev/null)" = idle ]; then
        sinfo -h -N -o "%N %T %c CPUs %m MB"
        exit 0
    fi
    sleep 0.5
done
echo "the node did not become idle in 30 s:" >&2
sinfo >&2 || true
tail -n 5 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
exit 1
