#!/usr/bin/env bash
# CI's last check: the test runs left no cgroup behind. modkit names its
# directories modkit-<pid>-<start>-<n> (one per backend, one per instance
# inside) and the tests name their parents modkit-test-<pid>-<n>; any of
# them still present in the cgroup v2 hierarchy after the suites is a leak.
# Leaks are listed, then removed when empty and unlocked (as a later backend
# would), and the check fails.
set -uo pipefail
status=0
for mount in /sys/fs/cgroup/unified /sys/fs/cgroup; do
  [[ -f $mount/cgroup.procs && -f $mount/cgroup.subtree_control ]] || continue
  # -prune: a leaked test parent is reported once, with what is inside it.
  mapfile -t leaked < <(find "$mount" -mindepth 1 -type d -regextype posix-extended \
    -regex '.*/modkit-([0-9]+-[0-9]+-[0-9]+|test-[0-9]+-[0-9]+)' -prune -print 2>/dev/null)
  for directory in "${leaked[@]}"; do
    status=1
    echo "check-cgroups: left behind: $directory ($(find "$directory" -mindepth 1 -type d | wc -l) below," \
      "$(cat "$directory/cgroup.procs" | wc -l) process(es))"
    # A live backend holds flock on its directory: never touched. Otherwise
    # deepest first; a populated cgroup refuses (EBUSY) and stays.
    if ! flock -n "$directory" true; then
      echo "check-cgroups: $directory is locked by a live backend; left alone"
      continue
    fi
    find "$directory" -depth -type d -exec rmdir {} \; 2>/dev/null || echo "check-cgroups: could not remove all of $directory"
  done
  break
done
[[ $status -eq 0 ]] && echo "check-cgroups: no cgroup left behind"
exit $status
