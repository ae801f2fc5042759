# shellcheck shell=bash
# benches/budget.sh: sourced by benches/compare.sh and benches/kv_vs_redis.sh
# for BUDGET=PCT, a CPU quota of PCT% of one core for the servers measured.
#
#   budget_setup PCT NAME   creates the cgroup (sets $budget_cgroup), or exits
#                           with a message saying why it cannot
#   budget_add PID          moves a process (all its threads) into it
#   budget_cleanup          removes it (its processes must have exited)
#
# cgroup v2's cpu.max ("QUOTA PERIOD", 100 ms periods); on a hybrid
# hierarchy whose v2 part has no cpu controller, v1's cpu.cfs_quota_us.
# Needs root.

budget_cgroup=""

budget_setup() { # budget_setup PCT NAME
    local pct=$1 quota why
    if ! [[ $pct =~ ^[1-9][0-9]*$ ]]; then
        echo "BUDGET must be a percentage of one core (1, 2, ...), not '$pct'" >&2
        exit 1
    fi
    quota=$((pct * 1000)) # microseconds per 100 ms period
    if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        # The cpu controller must be enabled for the root's children.
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
            echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
        budget_cgroup=/sys/fs/cgroup/$2.$$
        if mkdir "$budget_cgroup" 2>/dev/null && echo "$quota 100000" >"$budget_cgroup/cpu.max" 2>/dev/null; then
            return
        fi
        why="cannot create a cgroup with cpu.max under /sys/fs/cgroup (cgroup v2 not writable: run as root, in a container that delegates cgroups)"
    elif [ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
        budget_cgroup=/sys/fs/cgroup/cpu/$2.$$
        if mkdir "$budget_cgroup" 2>/dev/null &&
            echo 100000 >"$budget_cgroup/cpu.cfs_period_us" 2>/dev/null &&
            echo "$quota" >"$budget_cgroup/cpu.cfs_quota_us" 2>/dev/null; then
            return
        fi
        why="cannot create a cgroup with a CPU quota under /sys/fs/cgroup/cpu (cgroup v1 not writable: run as root)"
    else
        why="no cgroup CPU controller (neither cgroup v2's /sys/fs/cgroup/cgroup.controllers with cpu, nor v1's /sys/fs/cgroup/cpu)"
    fi
    budget_cleanup
    echo "BUDGET=$pct: $why" >&2
    exit 1
}

budget_add() { # budget_add PID
    if ! echo "$1" >"$budget_cgroup/cgroup.procs"; then
        echo "BUDGET: cannot move process $1 into $budget_cgroup" >&2
        exit 1
    fi
}

budget_cleanup() {
    if [ -n "$budget_cgroup" ] && [ -d "$budget_cgroup" ]; then
        rmdir "$budget_cgroup" 2>/dev/null || echo "BUDGET: could not remove $budget_cgroup" >&2
    fi
    budget_cgroup=""
}
