//! `containerd-shim-cove-v1`: argv dispatch only (-v, -info, start, delete, the pause).
#![deny(unsafe_code)]

use cove::bootstrap;

fn main() {
    cove::panic::install_crash_only();
    let args: Vec<String> = std::env::args().collect();
    // The pause process, re-exec'd by its setup (shim/pause/confine.rs).
    if args.len() == 1 && args[0] == cove::pause::PAUSE_ARGV0 {
        cove::pause::exec_main();
    }
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-cove-v1: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        print!("{}", cove::version::text("containerd-shim-cove-v1"));
        return;
    }
    let result = if flags.info {
        bootstrap::info()
    } else {
        match flags.action.as_str() {
            "start" => bootstrap::start(&flags),
            "delete" => bootstrap::delete(&flags),
            // The server is forked by `start`; it has no action of its own.
            other => Err(cove::error::Error::InvalidArgument(format!(
                "unknown action {other:?}: expected start or delete (or -v, -info)"
            ))),
        }
    };
    if let Err(e) = result {
        eprintln!("containerd-shim-cove-v1: {e}");
        std::process::exit(1);
    }
}
