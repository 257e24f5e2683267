//! The panic policy: crash-only.
//!
//! A panic means an invariant of the shim no longer holds, so nothing it holds in memory
//! can be trusted to be undone correctly. The shim logs the panic to its log (which
//! containerd copies into its own) and aborts: no unwinding through half-done request
//! state, through a forked child's copy of the parent's frames, or past an FFI boundary.
//! containerd sees the shim's connection close and runs `containerd-shim-cove-v1 delete`,
//! which kills what the records name (pause processes by pid and start time, containers
//! through their cgroups and runc) and removes mounts, cgroups, units and records; the
//! tests crash the shim at each step of StartSandbox and Task.Create and check exactly that.

/// Installs the crash-only hook. Call it first thing in `main`; forked children inherit it.
pub fn install_crash_only() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!(
            "cove {} (pid {}): panic: {info}; aborting so that containerd cleans up with `delete`",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        log::error!("{msg}");
        log::logger().flush();
        eprintln!("{msg}");
        std::process::abort();
    }));
}
