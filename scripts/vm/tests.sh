#!/bin/sh
# What a guest leg of `make test-vm` runs: the tests whose outcome can depend on the
# kernel (Debian's 6.1 in the guest), the cgroup version (pure v2), the cgroup driver
# (cgroupfs or systemd) or systemd itself. Everything else (unit, property, parsing and
# pure ttrpc tests, the exec-drain and bounds suites, CRI's handler features, output
# through pipes) `make test` and the matrix have already run on the host; under QEMU's
# emulation they would only cost time.
#
# Usage: tests.sh LEG          prints the nextest filter expression for LEG
#        tests.sh --check      fails if a test named below no longer exists, or a test of
#                              the pod suites is named nowhere (run.sh runs it on the host,
#                              so that a renamed or new test cannot drop out unseen)
set -eu

# Both legs: the tests whose outcome depends on the cgroup driver on pure v2, that is on
# what cove's cgroup code creates, places, reads, freezes, kills and removes (and on
# where the pause sits, which the escape test's cgroup namespace view shows), as binary:test.
# A test that takes its cgroup paths from the driver (CRI pods, Docker) or reads what the
# driver made runs in both; one that names cgroupfs paths whatever the leg runs once.
both='
cove:cgroups::tests::a_created_parent_holding_other_cgroups_is_kept_without_error
cove:cgroups::tests::a_parent_another_start_made_and_has_not_set_up_yet_is_set_up
cove:cgroups::tests::kill_all_reaches_processes_forked_into_the_cgroup
cove:cgroups::tests::removing_a_busy_cgroup_lets_other_tasks_run
cri_compat:pod_resource_updates_through_cri_match_the_runc_pod_path
cri_compat:pod_stats_through_cri_match_the_runc_pod_path
cri_e2e:stop_and_remove_leave_nothing_behind_for_cove_and_runc
cri_e2e:sandbox_metrics_through_containerds_controller_api
cri_restart:containers_that_end_while_containerd_restarts_keep_their_reason
escape:a_pod_sees_no_more_of_cove_than_of_the_runc_pause
task_cri:containers_in_cove_pods_behave_as_in_runc_pods
ttrpc_sandbox:a_systemd_slice_parent_gets_a_scope_or_a_clear_error
docker:docker_cgroup_behaviour_is_the_same_on_cove_as_on_runc
'

# The cgroupfs leg only: what depends on pure cgroup v2 and the kernel but not on the
# driver, because it names cgroupfs paths (`/cove-test/...`, ctr's `/default/...`) in
# either leg: plain `ctr` tasks (pause, metrics, exec, a crashed shim, an OOM kill whose
# scope is removed first), the crash-at-any-step, hostile-request and retried-delete leak
# checks, a pod shut down with a running and a paused (frozen) task left, and the
# shim-alone lifecycle and crashed-shim delete. The systemd leg would run them on the same
# paths again. And checkpoint and restore (CRIU runs in the guest's
# kernel, not on every host): through ctr (and the checkpoints refused), and CRI's
# checkpoint and restore of a pod's container, here only for their cost under emulation
# (the systemd driver's part in them is runc's; Docker's restore runs it, below).
cgroupfs_only='
task_ctr:ctr_run_exec_signal_pause_metrics_and_delete
task_ctr:a_crashed_shim_leaves_no_container_or_mount_behind
task_ctr:an_oom_kill_is_reported_when_the_scope_is_gone_before_the_shim_looks
checkpoint:a_counter_checkpointed_and_restored_through_ctr_goes_on_as_on_runc
checkpoint:a_container_checkpointed_and_restored_through_cri_goes_on_in_its_pod_as_on_runc
checkpoint:checkpoints_of_paused_exec_and_terminal_tasks_end_as_on_runc
hostile:delete_after_a_crash_at_any_step_leaves_nothing
hostile:hostile_requests_get_a_status_and_leak_nothing
hostile:a_failed_delete_can_be_retried
hostile:a_pod_shut_down_twice_at_once_with_tasks_left_takes_them_along
ttrpc_sandbox:full_lifecycle_with_pod_files_waiters_update_and_shutdown
ttrpc_sandbox:delete_cleans_up_after_a_crashed_shim
'

# The systemd leg only: what depends on the kernel (6.1), pure cgroup v2 or systemd as
# PID 1 but not on the driver is proven once, on the configuration most nodes run.
# The Docker script and live-restore are here too: what they check of Docker does not
# depend on the driver (the cgroup script above does), and this leg is where their bugs
# showed. Docker's checkpoint and restore is here too: the one restore under the systemd
# driver (runc restores the container into a new scope).
systemd_only='
cri_e2e:cove_pod_is_ready_in_its_cni_netns_with_its_own_namespaces
cri_restart:twenty_live_pods_per_handler_come_back_whole_after_a_restart
escape:the_pause_and_the_shim_are_protected_from_the_oom_killer_as_on_the_runc_path
task_cri:cove_runs_podsandbox_pods_pause_and_containers_in_one_shim
userns:a_user_namespaced_pod_on_cove_is_as_on_the_runc_pod_path
cri_compat:a_recursive_read_only_mount_is_read_only_all_the_way_down_since_2_2_7
cri_compat:a_runtime_options_table_reaches_cove_containers
cri_compat:host_network_pod_through_cri_since_2_3_0
docker:docker_behaves_the_same_on_cove_as_on_runc
docker:containers_outlive_a_dockerd_restart_with_live_restore
checkpoint:a_counter_checkpointed_and_restored_through_docker_goes_on_as_on_runc
'

# No leg: what depends on none of these and the host has run (namespace sharing with the
# host, a restart that cri_restart's twenty pods cover, and an idle shim's stack given back
# with madvise), besides the suites not named.
host_only='
cri_e2e:an_idle_shim_gives_back_the_stack_its_requests_used
cri_e2e:host_pid_and_ipc_pods_share_exactly_those_namespaces
cri_e2e:host_network_pod_shares_exactly_the_host_namespaces
cri_compat:live_pods_survive_a_containerd_restart
'

expr() { # LIST
    for t in $1; do
        printf ' | (binary(=%s) & test(=%s))' "${t%%:*}" "${t#*:}"
    done
}

case ${1:?usage: tests.sh LEG|--check} in
--check)
    all=$(cargo nextest list --run-ignored all --message-format oneline 2>/dev/null)
    missing="" unplaced=""
    for t in $both $cgroupfs_only $systemd_only $host_only; do
        b=${t%%:*} n=${t#*:}
        [ "$b" = cove ] && id=cove || id="cove::$b"
        printf '%s\n' "$all" | grep -qxF "$id $n" || missing="$missing $t"
    done
    # Every test of the suites that exist for pods on a node is placed, so that a new one
    # is put in a leg (or left to the host) on purpose.
    for b in checkpoint cri_e2e cri_restart escape task_cri userns; do
        for n in $(printf '%s\n' "$all" | sed -n "s/^cove::$b //p"); do
            printf '%s\n' $both $cgroupfs_only $systemd_only $host_only | grep -qxF "$b:$n" || unplaced="$unplaced $b:$n"
        done
    done
    [ -z "$missing" ] || { echo "test-vm: tests.sh names tests that do not exist:$missing" >&2; exit 1; }
    [ -z "$unplaced" ] || { echo "test-vm: tests.sh places no leg for:$unplaced" >&2; exit 1; }
    ;;
cgroupfs | systemd)
    e=$(expr "$both")
    if [ "$1" = systemd ]; then e="$e$(expr "$systemd_only")"; else e="$e$(expr "$cgroupfs_only")"; fi
    echo "${e# | }"
    ;;
*) echo "tests.sh: unknown leg $1" >&2; exit 2 ;;
esac
