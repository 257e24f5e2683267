//! The binary's one-shot actions as containerd invokes them: `start` (launch or reuse the
//! server for this sandbox and print the bootstrap reply), `delete` (clean up after a
//! sandbox, also when its server is gone) and `-info`. The server is `server.rs`.
//!
//! `start` binds the shim socket itself and hands the listening descriptor to the server it
//! spawns, then waits on a readiness pipe: when it prints the reply the server is accepting,
//! and a server that fails to come up is reported as a `start` error instead of a socket
//! that never answers. The bundle's `address` is written while the server comes up, and a
//! server whose address cannot be written is killed too. The server is spawned with stdio
//! on /dev/null in its own process group, so containerd's `CombinedOutput` never waits on a
//! pipe the server holds.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim::bootstrap::{BootstrapParams, BootstrapResult};
use containerd_shim::Flags;
use containerd_shim_protos::api::DeleteResponse;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::Message;

use crate::error::{Error, IoContext, Result};
use crate::state::Leftovers;

/// The task API version of the bootstrap reply (containerd reuses our socket for tasks at 3).
pub const BOOTSTRAP_VERSION: i32 = 3;
/// Largest stdin payload `start` reads (containerd's own limit).
const MAX_STDIN: u64 = 10 << 20;
/// The file in the bundle that records the socket address, for `delete`.
const ADDRESS_FILE: &str = "address";

/// How containerd asked: 2.0-2.2 send runtime options (or nothing) and want JSON; 2.3+ send
/// `BootstrapParams` and want a `BootstrapResult`.
enum Protocol {
    Legacy,
    Bootstrap(Box<BootstrapParams>),
}

fn read_protocol(flags: &Flags) -> Result<Protocol> {
    match crate::sys::read_stdin(MAX_STDIN).context(|| "read stdin".into())? {
        Some(input) => Ok(detect_protocol(&input, flags)),
        None => Ok(Protocol::Legacy),
    }
}

/// BootstrapParams name this instance; a legacy runtime-options `Any` also parses as
/// BootstrapParams (type URL and value land in fields 1 and 2) but never names our id
/// and namespace together.
fn detect_protocol(input: &[u8], flags: &Flags) -> Protocol {
    match BootstrapParams::parse_from_bytes(input) {
        Ok(p)
            if !input.is_empty() && p.instance_id == flags.id && p.namespace == flags.namespace =>
        {
            Protocol::Bootstrap(Box::new(p))
        }
        _ => Protocol::Legacy,
    }
}

/// The reply `start` prints.
fn encode_reply(address: &str, protocol: &Protocol) -> Result<Vec<u8>> {
    match protocol {
        Protocol::Legacy => Ok(serde_json::json!({
            "version": BOOTSTRAP_VERSION,
            "address": address,
            "protocol": "ttrpc",
        })
        .to_string()
        .into_bytes()),
        Protocol::Bootstrap(_) => BootstrapResult {
            version: BOOTSTRAP_VERSION,
            address: address.to_owned(),
            protocol: "ttrpc".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(|e| Error::Internal(format!("encode bootstrap result: {e}"))),
    }
}

pub(crate) fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// (device, inode) of the file at `path`, to tell a server's socket file from a
/// successor's bound at the same path.
pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `start`: launch the server for this sandbox (or find the running one) and print the reply.
pub fn start(flags: &Flags) -> Result<()> {
    crate::ids::validate("id", &flags.id)?;
    let protocol = read_protocol(flags)?;
    let (ttrpc_address, socket_dir) = match &protocol {
        Protocol::Bootstrap(p) => (
            Some(p.containerd_ttrpc_address.clone()),
            p.socket_dir.clone(),
        ),
        Protocol::Legacy => (None, None),
    };
    let opts = containerd_shim::StartOpts {
        address: flags.address.clone(),
        namespace: flags.namespace.clone(),
        socket_dir,
        ..Default::default()
    };
    // Containers of one CRI pod share their sandbox's server (the legacy grouping rule,
    // for clients that run `start` per container).
    let group = sandbox_of_bundle().unwrap_or_else(|| flags.id.clone());
    let address = opts.socket_address(&group);
    let path = socket_path(&address);
    let spawned = match UnixStream::connect(path) {
        Ok(_) => None,
        Err(_) => Some(spawn_server(flags, &address, ttrpc_address.as_deref())?),
    };
    // Written while a new server comes up, and removed if it does not.
    let written = std::fs::write(ADDRESS_FILE, &address)
        .context(|| format!("write {ADDRESS_FILE} in the bundle"));
    if let Some(server) = spawned {
        let up = server.wait_ready(&flags.id);
        if up.is_err() || written.is_err() {
            // Nobody would ever ask a server whose address containerd never got to exit.
            if up.is_ok() {
                server.kill();
            }
            let _ = std::fs::remove_file(ADDRESS_FILE);
            up?;
        }
    }
    written?;
    let reply = encode_reply(&address, &protocol)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&reply)
        .and_then(|_| out.flush())
        .context(|| "write bootstrap reply".into())
}

/// The `io.kubernetes.cri.sandbox-id` annotation of the bundle's config.json (cwd).
fn sandbox_of_bundle() -> Option<String> {
    let text = std::fs::read_to_string("config.json").ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let id = v
        .get("annotations")?
        .get("io.kubernetes.cri.sandbox-id")?
        .as_str()?;
    crate::ids::validate("sandbox id", id).ok()?;
    Some(id.to_owned())
}

/// A server just forked, not yet known to serve.
struct Spawned {
    child: nix::unistd::Pid,
    ready: std::fs::File,
    socket: PathBuf,
    /// The socket file as bound: another `start` for the same id may have bound its own
    /// at that path since, and that one is not this server's to remove.
    socket_file: Option<(u64, u64)>,
}

fn spawn_server(flags: &Flags, address: &str, ttrpc_address: Option<&str>) -> Result<Spawned> {
    let path = Path::new(socket_path(address));
    let listener = bind_socket(path)?;
    let socket_file = file_identity(path);
    let (ready_rd, ready_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context(|| "readiness pipe".into())?;
    // The server is this process forked, not the binary exec'd again (as containerd's Go
    // shims must): `start` has one thread and no runtime yet, so the child may go on as
    // the server, and an exec and a start-up are saved on every pod's start.
    let child = match crate::sys::fork(None).context(|| "fork the shim server".into())? {
        crate::sys::Forked::Child => {
            drop(ready_rd);
            become_server(flags, address, ttrpc_address, listener, ready_wr)
        }
        crate::sys::Forked::Parent(pid) => pid,
    };
    // As containerd's own shims: one above containerd, so the OOM killer takes a shim
    // before the daemon. Raising needs no privilege; a failure here is /proc's, and the
    // server then keeps containerd's score.
    let _ = crate::oom_score::adjust_shim(child.as_raw() as u32);
    Ok(Spawned {
        child,
        ready: std::fs::File::from(ready_rd),
        socket: path.to_path_buf(),
        socket_file,
    })
}

impl Spawned {
    /// Waits (bounded) for the server to say it serves; a server that says anything else,
    /// or nothing, is killed and its socket removed.
    fn wait_ready(&self, id: &str) -> Result<()> {
        let buf = read_ready_within(&self.ready, SERVER_READY_TIMEOUT);
        if buf.as_slice() == READY {
            return Ok(());
        }
        let status = self.kill();
        Err(Error::Internal(format!(
            "shim server for {id} did not come up ({}; exit {status:?}); see the shim log",
            String::from_utf8_lossy(&buf)
        )))
    }

    /// Kills and reaps the server, and removes its socket while it is still the one this
    /// `start` bound.
    fn kill(&self) -> Option<nix::sys::wait::WaitStatus> {
        let _ = nix::sys::signal::kill(self.child, nix::sys::signal::Signal::SIGKILL);
        let status = loop {
            match nix::sys::wait::waitpid(self.child, None) {
                Err(nix::Error::EINTR) => continue,
                r => break r.ok(),
            }
        };
        if self.socket_file.is_some() && file_identity(&self.socket) == self.socket_file {
            let _ = std::fs::remove_file(&self.socket);
        }
        status
    }
}

/// The forked server: its own process group, stdio on /dev/null (containerd reads
/// `start`'s output until every holder of the pipe has closed it), containerd's ttrpc
/// address for its events, then the server; it exits when the server returns.
fn become_server(
    flags: &Flags,
    address: &str,
    ttrpc_address: Option<&str>,
    listener: UnixListener,
    ready: OwnedFd,
) -> ! {
    let code = match detach_for_server(ttrpc_address) {
        Ok(()) => {
            let server_flags = Flags {
                debug: flags.debug,
                namespace: flags.namespace.clone(),
                id: flags.id.clone(),
                socket: address.to_owned(),
                bundle: flags.bundle.clone(),
                address: flags.address.clone(),
                publish_binary: flags.publish_binary.clone(),
                ..Default::default()
            };
            match crate::server::serve(&server_flags, listener, ready) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("shim server: {e}");
                    1
                }
            }
        }
        Err(e) => {
            // Said on the readiness pipe instead of "ok": `start` reports it.
            drop(listener);
            let _ = std::fs::File::from(ready).write_all(e.to_string().as_bytes());
            1
        }
    };
    std::process::exit(code)
}

fn detach_for_server(ttrpc_address: Option<&str>) -> Result<()> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
        .context(|| "own process group".into())?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context(|| "open /dev/null".into())?;
    for fd in 0..=2 {
        nix::unistd::dup2(null.as_raw_fd(), fd).context(|| "stdio on /dev/null".into())?;
    }
    if let Some(t) = ttrpc_address {
        // One thread: the environment may change.
        std::env::set_var("TTRPC_ADDRESS", t);
    }
    Ok(())
}

/// How long `start` waits for the server it spawned to say it is serving (it binds
/// nothing and starts no process before that: milliseconds, seconds under emulation). A
/// server that says nothing by then is killed and `start` fails, rather than leaving
/// containerd's `start` (and a server nobody will ever ask to exit) hanging.
const SERVER_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// What the server writes on the readiness pipe once it serves, in one write(2); a server
/// that cannot serve writes why instead, and exits.
pub(crate) const READY: &[u8] = b"ok";

/// What `r` gives until it has given [`READY`], its writers close it, or `limit` has
/// passed. [`READY`] is taken as soon as it comes: the pipe's write end is also held, until
/// its exec, by the pause helper the server forked, and `start` need not wait for that. A
/// write of less than PIPE_BUF bytes reaches the reader whole, so a server's error is never
/// read as [`READY`].
fn read_ready_within(mut r: &std::fs::File, limit: std::time::Duration) -> Vec<u8> {
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return buf;
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = [nix::poll::PollFd::new(
            r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(
            &mut pfd,
            nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
        ) {
            Err(nix::Error::EINTR) | Ok(0) => continue,
            Err(_) => return buf,
            Ok(_) => {}
        }
        match r.read(&mut chunk) {
            Ok(0) => return buf,
            Ok(n) if buf.is_empty() && &chunk[..n] == READY => return chunk[..n].to_vec(),
            Ok(n) if buf.len() < 4096 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return buf,
        }
    }
}

/// The mode of the shim socket, and of a directory cove creates for it: the shim's user
/// alone, as containerd's Go shim (`shim.NewSocket`) chmods its socket 0600 and makes its
/// directory no looser than 0700. Both are set explicitly, whatever the umask.
const SOCKET_MODE: u32 = 0o600;
const SOCKET_DIR_MODE: u32 = 0o700;

/// Binds and listens on the shim socket at `path`, replacing a stale one. Missing
/// directories are created [`SOCKET_DIR_MODE`]. The socket is never looser than
/// [`SOCKET_MODE`]: its inode gets that mode before bind(2), which makes the file with the
/// inode's mode less the umask; and it is chmodded after, so that no umask leaves it
/// stricter either.
pub(crate) fn bind_socket(path: &Path) -> Result<UnixListener> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    use nix::sys::stat::{fchmod, Mode};
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(SOCKET_DIR_MODE)
            .create(dir)
            .context(|| format!("create {}", dir.display()))?;
        for d in missing {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(SOCKET_DIR_MODE))
                .context(|| format!("chmod {}", d.display()))?;
        }
    }
    let _ = std::fs::remove_file(path);
    let what = || format!("listen on {}", path.display());
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context(what)?;
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(SOCKET_MODE)).context(what)?;
    let addr = nix::sys::socket::UnixAddr::new(path).context(what)?;
    bind(fd.as_raw_fd(), &addr).context(what)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)) {
        let _ = std::fs::remove_file(path);
        return Err(Error::io(format!("chmod {}", path.display()), e));
    }
    if let Err(e) = listen(&fd, Backlog::MAXCONN) {
        let _ = std::fs::remove_file(path);
        return Err(Error::sys(what(), e));
    }
    Ok(UnixListener::from(fd))
}

/// `delete`: kill what the sandbox left running, remove its mounts, files, cgroups and
/// socket, and print a DeleteResponse. Idempotent; works when the server is gone.
pub fn delete(flags: &Flags) -> Result<()> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context(|| "current directory".into())?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let mut resp = DeleteResponse::new();
    if crate::task::container::cleanup_leftover(&bundle, &flags.id, &flags.namespace)? {
        resp.exit_status = 128 + libc::SIGKILL as u32;
    }
    // A sandbox's containers: containerd runs `delete` only for the sandbox when the
    // sandbox's shim dies.
    crate::task::container::cleanup_indexed(&bundle, &flags.namespace)?;
    let left = match Leftovers::load(&bundle) {
        Ok(l) => l,
        // Unreadable is not absent: say so, and let the rest of the cleanup go on.
        Err(Error::Corrupt(msg)) => {
            log::warn!("{msg}; its pause process, cgroups and pod files are not known");
            eprintln!("cove: {msg}; its pause process, cgroups and pod files are not known");
            let _ = Leftovers::forget(&bundle);
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(left) = left {
        // Kills the recorded pause, and whatever is in the pause's cgroups (a pause the
        // server died before recording).
        let alive = left.kill_pause();
        if let Some((pid, _)) = left.pause {
            resp.pid = pid as u32;
            if alive {
                resp.exit_status = 128 + libc::SIGKILL as u32;
                wait_gone(pid);
            }
        }
        if !left.units.is_empty() {
            let layout = crate::cgroups::Layout::detect()?;
            crate::cgroups::systemd::stop_units_blocking(&left.units, &layout)?;
        }
        left.clean()?;
        Leftovers::forget(&bundle)?;
    }
    // The pod's /dev/shm is mounted at a place the bundle's layout fixes; a server that died
    // after mounting it and before recording it left it out of the record.
    if let Some(files) = crate::sandbox::files::PodFiles::locate(&bundle, &flags.id) {
        crate::state::unmount_shm(&files.shm())?;
    }
    if let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) {
        let _ = std::fs::remove_file(socket_path(address.trim()));
    }
    resp.exited_at = Some(Timestamp::now()).into();
    print_message(&resp, "delete response")
}

/// Writes a protobuf message to stdout, the reply format of `delete` and `-info`.
fn print_message(msg: &impl Message, what: &str) -> Result<()> {
    let bytes = msg
        .write_to_bytes()
        .map_err(|e| Error::Internal(format!("encode {what}: {e}")))?;
    std::io::stdout()
        .write_all(&bytes)
        .context(|| format!("write {what}"))
}

/// After SIGKILL, waits (bounded) until the process has left its cgroups.
fn wait_gone(pid: i32) {
    for _ in 0..200 {
        if crate::state::proc_start_time(pid).is_none() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The type URL containerd registers for the OCI runtime features document
/// (`typeurl.Register(&features.Features{}, "types.containerd.io",
/// "opencontainers/runtime-spec", "1", "features", "Features")`); the value is its JSON.
pub const FEATURES_TYPE: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// `-info`: RuntimeInfo for containerd's introspection, with the OCI runtime features of
/// the runc cove runs (`runc features`), as containerd's runc shim reports them: CRI
/// (2.2.7, 2.3.4, 2.4 on) reads recursive read-only mounts and user namespace support of a
/// handler from them. The runtime options containerd may pass on stdin name the binary.
pub fn info() -> Result<()> {
    use containerd_shim_protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    let mut v = RuntimeVersion::new();
    v.version = crate::version::VERSION.into();
    let mut info = RuntimeInfo::new();
    info.name = crate::version::RUNTIME_NAME.into();
    info.version = Some(v).into();
    let options = read_info_options();
    let binary = options
        .as_ref()
        .and_then(|a| crate::options::runc_options(Some(a)).ok())
        .map(|o| o.binary_name)
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "runc".into());
    info.options = options.into();
    if let Some(features) = runtime_features(&binary) {
        info.features = Some(protobuf::well_known_types::any::Any {
            type_url: FEATURES_TYPE.into(),
            value: features,
            ..Default::default()
        })
        .into();
    }
    print_message(&info, "runtime info")
}

/// The runtime options `-info` may get on stdin (a protobuf Any), if any.
fn read_info_options() -> Option<protobuf::well_known_types::any::Any> {
    let input = crate::sys::read_stdin(MAX_STDIN).ok()??;
    if input.is_empty() {
        return None;
    }
    protobuf::well_known_types::any::Any::parse_from_bytes(&input).ok()
}

/// `<binary> features`: the OCI runtime features JSON, checked to be JSON.
/// How long `-info` waits for `runc features` (milliseconds normally).
const FEATURES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn runtime_features(binary: &str) -> Option<Vec<u8>> {
    let mut cmd = Command::new(binary);
    cmd.arg("features");
    let out = crate::task::container::output_within(cmd, FEATURES_TIMEOUT).ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?;
    Some(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags {
            id: "sb1".into(),
            namespace: "k8s.io".into(),
            ..Default::default()
        }
    }

    #[test]
    fn legacy_reply_is_version_3_json() {
        let out = encode_reply("unix:///run/containerd/s/abc", &Protocol::Legacy).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 3, "address": "unix:///run/containerd/s/abc", "protocol": "ttrpc"})
        );
    }

    #[test]
    fn bootstrap_params_for_this_instance_select_the_protobuf_reply() {
        let p = BootstrapParams {
            instance_id: "sb1".into(),
            namespace: "k8s.io".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            ..Default::default()
        };
        let proto = detect_protocol(&p.write_to_bytes().unwrap(), &flags());
        assert!(matches!(proto, Protocol::Bootstrap(_)));
        let out = encode_reply("unix:///s", &proto).unwrap();
        let r = BootstrapResult::parse_from_bytes(&out).unwrap();
        assert_eq!(
            (r.version, r.address.as_str(), r.protocol.as_str()),
            (3, "unix:///s", "ttrpc")
        );
    }

    #[test]
    fn runtime_options_and_empty_stdin_are_legacy() {
        let any = protobuf::well_known_types::any::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![8, 1],
            ..Default::default()
        };
        assert!(matches!(
            detect_protocol(&any.write_to_bytes().unwrap(), &flags()),
            Protocol::Legacy
        ));
        assert!(matches!(detect_protocol(&[], &flags()), Protocol::Legacy));
    }
}
