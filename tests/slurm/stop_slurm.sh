#!/usr/bin/env bash
# Stop the cluster of tests/slurm/start_slurm.sh STATE_DIR: cancel its jobs,
# stop slurmd, slurmctld and the munged it started (by their pid files), and
# remove the /run/slurm/conf link. Safe to run twice.
set -uo pipefail

state=${1:?usage: stop_slurm.sh STATE_DIR}
[ -d "$state" ] || exit 0
state=$(cd "$state" && pwd)
if [ -f "$state/slurm.conf" ]; then
    SLURM_CONF=$state/slurm.conf scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
fi

stop() {  # stop the daemon of a pid file, waiting up to 10 s
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop "$state/slurmd.pid"
stop "$state/slurmctld.pid"
stop "$state/munged.pid"
if [ -L /run/slurm/conf ] && [ "$(readlink /run/slurm/conf)" = "$state/spool/conf-cache" ]; then
    rm -f /run/slurm/conf
fi
exit 0
