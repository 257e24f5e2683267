#!/bin/sh
# What a guest leg of `make test-vm` runs: the tests whose outcome can depend on the
# kernel (Debian's 6.1 in the guest), the cgroup version (pure v2), the cgroup driver
# (cgroupfs or systemd) or systemd itself. Everything else (unit, property, parsing and
# pure ttrpc tests, the exec-drain and bounds suites, CRI's handler features, output
# through pipes) `make test` and the matrix have already run on the host; under QEMU's
# emulation they would only cost time.
#
# Usage: tests.sh LEG          prints the nextest filter expression for LEG
#        tests.sh --check      fails if a test named below no longer exists (run.sh runs it
#                              on the host, so that a renamed test cannot drop out unseen)
set -eu

# Whole suites: every test in them creates pods, containers, cgroups or namespaces and
# checks them on the host.
suites='cri_e2e cri_restart escape task_cri userns'

# Single tests of the other suites, as binary:test.
tests='
cove:cgroups::tests::a_created_parent_holding_other_cgroups_is_kept_without_error
cove:cgroups::tests::kill_all_reaches_processes_forked_into_the_cgroup
cove:cgroups::tests::removing_a_busy_cgroup_lets_other_tasks_run
cri_compat:a_recursive_read_only_mount_is_read_only_all_the_way_down_since_2_2_7
cri_compat:a_runtime_options_table_reaches_cove_containers
cri_compat:host_network_pod_through_cri_since_2_3_0
cri_compat:live_pods_survive_a_containerd_restart
cri_compat:pod_resource_updates_through_cri_match_the_runc_pod_path
cri_compat:pod_stats_through_cri_match_the_runc_pod_path
task_ctr:ctr_run_exec_signal_pause_metrics_and_delete
task_ctr:a_crashed_shim_leaves_no_container_or_mount_behind
hostile:delete_after_a_crash_at_any_step_leaves_nothing
hostile:hostile_requests_get_a_status_and_leak_nothing
hostile:a_failed_delete_can_be_retried
ttrpc_sandbox:full_lifecycle_with_pod_files_waiters_update_and_shutdown
ttrpc_sandbox:delete_cleans_up_after_a_crashed_shim
ttrpc_sandbox:a_systemd_slice_parent_gets_a_scope_or_a_clear_error
docker:docker_cgroup_behaviour_is_the_same_on_cove_as_on_runc
'

# The Docker script and the live-restore test run in the systemd leg only: what they
# check of Docker does not depend on the driver (the cgroup script above does), and the
# systemd leg is where their bugs showed.
systemd_only='
docker:docker_behaves_the_same_on_cove_as_on_runc
docker:containers_outlive_a_dockerd_restart_with_live_restore
'

expr() { # LIST
    for t in $1; do
        printf ' | (binary(=%s) & test(=%s))' "${t%%:*}" "${t#*:}"
    done
}

case ${1:?usage: tests.sh LEG|--check} in
--check)
    all=$(cargo nextest list --run-ignored all --message-format oneline 2>/dev/null)
    missing=""
    for t in $tests $systemd_only; do
        b=${t%%:*} n=${t#*:}
        [ "$b" = cove ] && id=cove || id="cove::$b"
        printf '%s\n' "$all" | grep -qxF "$id $n" || missing="$missing $t"
    done
    for s in $suites; do
        printf '%s\n' "$all" | grep -q "^cove::$s " || missing="$missing $s"
    done
    [ -z "$missing" ] || { echo "test-vm: tests.sh names tests that do not exist:$missing" >&2; exit 1; }
    ;;
cgroupfs | systemd)
    e=$(for s in $suites; do printf ' | binary(=%s)' "$s"; done)
    e="$e$(expr "$tests")"
    [ "$1" = systemd ] && e="$e$(expr "$systemd_only")"
    echo "${e# | }"
    ;;
*) echo "tests.sh: unknown leg $1" >&2; exit 2 ;;
esac
