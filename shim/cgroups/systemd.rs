//! The systemd cgroup driver: when a pod's `cgroup_parent` is a systemd slice (kubelet with
//! `cgroupDriver: systemd` sends `kubepods-besteffort-pod<uid>.slice`), systemd owns the
//! cgroup tree, and the pause process lives in a transient scope unit that cove asks systemd
//! for over D-Bus, as runc's systemd driver does for containers:
//! `StartTransientUnit("cri-containerd-<id>.scope")` in the pod's slice, with `Delegate=yes`
//! and the pause pid. The scope is named as containerd's runc pod path names its pause
//! container's, so both look alike to anything that walks the tree.
//!
//! Slices that did not exist before the scope (kubelet normally creates the pod slice
//! first) are created by systemd on demand; cove notes them and stops them again once they
//! hold nothing, so a pod leaves no unit behind.
//!
//! D-Bus goes through `zbus`, over a connection made per operation: a shim talks to systemd
//! twice in a pod's life, and holds nothing open in between.

use std::path::PathBuf;
use std::time::Duration;

use zbus::{OwnedObjectPath, Variant as Value};

use crate::error::{Error, Result};

/// The prefix of the pause scope, as containerd's CRI names its sandbox and container
/// cgroups under the systemd driver (`<slice>:cri-containerd:<id>`).
pub const SCOPE_PREFIX: &str = "cri-containerd";

/// How long a systemd job (starting or stopping a unit) may take before cove gives up, and
/// how long any D-Bus call to systemd may (runc's systemd driver waits as long for a job).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const NO_SUCH_UNIT: &str = "org.freedesktop.systemd1.NoSuchUnit";

/// Whether a cgroup parent is in systemd's slice form rather than a cgroupfs path.
pub fn is_slice(parent: &str) -> bool {
    parent.ends_with(".slice") && !parent.contains('/')
}

/// Whether an OCI `cgroupsPath` is in runc's systemd form, `slice:prefix:name`.
pub fn is_systemd_cgroups_path(path: &str) -> bool {
    !path.starts_with('/') && path.split(':').count() == 3
}

/// Checks a slice name the way systemd and runc do: `[a-zA-Z0-9:_.\-]` characters, a
/// `.slice` suffix, and dashes only between non-empty parts (each dash is a level).
pub fn validate_slice(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "cgroup parent {name:?} is not a valid systemd slice name: {why}"
        )))
    };
    let Some(stem) = name.strip_suffix(".slice") else {
        return bad("it must end in .slice");
    };
    if name.len() > 255 {
        return bad("it is longer than 255 bytes");
    }
    if stem.is_empty() {
        return bad("the name before .slice is empty");
    }
    if !stem
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":_.-\\".contains(&b))
    {
        return bad("it holds a character systemd does not allow in unit names");
    }
    if stem != "-" && stem.split('-').any(str::is_empty) {
        return bad("a dash must separate two non-empty parts");
    }
    Ok(())
}

/// The slices from the root down to `name`: `a-b-c.slice` gives `a.slice`, `a-b.slice`,
/// `a-b-c.slice` (systemd nests a slice in the one named by its name up to the last dash).
/// `-.slice` is the root slice and has none.
pub fn ancestry(name: &str) -> Result<Vec<String>> {
    validate_slice(name)?;
    let stem = name.trim_end_matches(".slice");
    if stem == "-" {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

/// The cgroup path (from the hierarchy root) of a slice: `a-b.slice` is `/a.slice/a-b.slice`.
pub fn expand(name: &str) -> Result<PathBuf> {
    let mut p = PathBuf::from("/");
    for s in ancestry(name)? {
        p.push(s);
    }
    Ok(p)
}

/// The pause scope of sandbox `id`.
pub fn scope_name(id: &str) -> String {
    format!("{SCOPE_PREFIX}-{id}.scope")
}

/// Whether systemd runs this host (`sd_booted()`: it creates /run/systemd/system at boot).
pub fn booted() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Fails with what to do when a slice cannot be served on this host.
pub fn check_available(parent: &str) -> Result<()> {
    if booted() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "cgroup parent {parent:?} is a systemd slice, but systemd does not run this host \
         (no /run/systemd/system): configure kubelet with cgroupDriver: cgroupfs (and \
         containerd's runc options with SystemdCgroup = false), or run the node with systemd"
    )))
}

/// A connection to systemd's manager on the system bus.
pub struct Systemd {
    conn: zbus::Connection,
    manager: zbus::Proxy<'static>,
}

fn dbus_err(what: &str) -> impl Fn(zbus::Error) -> Error + '_ {
    move |e| Error::Internal(format!("systemd: {what}: {e}"))
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == NO_SUCH_UNIT)
}

impl Systemd {
    /// Connects to the system bus and subscribes to job events.
    pub async fn connect() -> Result<Systemd> {
        // Every call on this connection (and the connection itself) is bounded by
        // JOB_TIMEOUT, as the wait for a job is: a stalled systemd fails the request.
        let unreachable = |e: zbus::Error| {
            Error::FailedPrecondition(format!(
                "the systemd cgroup driver needs systemd's D-Bus API, and the system bus \
                 cannot be reached: {e}"
            ))
        };
        let build = zbus::connection::Builder::system()
            .method_timeout(JOB_TIMEOUT)
            .build();
        let conn = tokio::time::timeout(JOB_TIMEOUT, build)
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "the system bus did not answer within {}s",
                    JOB_TIMEOUT.as_secs()
                ))
            })?
            .map_err(unreachable)?;
        let manager = zbus::Proxy::new_owned(conn.clone(), DEST, PATH, MANAGER)
            .await
            .map_err(dbus_err("manager proxy"))?;
        manager
            .call::<_, _, ()>("Subscribe", &())
            .await
            .map_err(dbus_err("subscribe to job events"))?;
        Ok(Systemd { conn, manager })
    }

    /// The unit's `ActiveState`, or `None` when systemd has no such unit loaded.
    pub async fn active_state(&self, unit: &str) -> Result<Option<String>> {
        let path: OwnedObjectPath = match self.manager.call("GetUnit", &(unit,)).await {
            Ok(p) => p,
            Err(e) if is_no_such_unit(&e) => return Ok(None),
            Err(e) => return Err(dbus_err("get unit")(e)),
        };
        let proxy = zbus::Proxy::new(&self.conn, DEST, path, UNIT)
            .await
            .map_err(dbus_err("unit proxy"))?;
        let state: String = proxy
            .get_property("ActiveState")
            .await
            .map_err(dbus_err("read ActiveState"))?;
        Ok(Some(state))
    }

    /// The slices on the way to `slice` (itself included) that are not active now, outermost
    /// first: starting a unit in `slice` makes systemd create them.
    pub async fn missing_slices(&self, slice: &str) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for s in ancestry(slice)? {
            if self.active_state(&s).await?.as_deref() != Some("active") {
                missing.push(s);
            }
        }
        Ok(missing)
    }

    /// Starts the pause scope: `pid` moves into `<slice>/<scope>`, which systemd delegates.
    pub async fn start_scope(&self, scope: &str, slice: &str, pid: u32, what: &str) -> Result<()> {
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(what)),
            ("Slice", Value::from(slice)),
            ("Delegate", Value::from(true)),
            ("PIDs", Value::from(vec![pid])),
            ("DefaultDependencies", Value::from(false)),
            ("MemoryAccounting", Value::from(true)),
            ("CPUAccounting", Value::from(true)),
            ("IOAccounting", Value::from(true)),
            ("TasksAccounting", Value::from(true)),
            // A scope that fails is collected at once, not kept around as "failed".
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        self.run_job(scope, "start", |m| async move {
            m.call("StartTransientUnit", &(scope, "fail", props, aux))
                .await
        })
        .await
    }

    /// Stops a unit and waits until it is gone. A unit systemd no longer has is stopped.
    pub async fn stop(&self, unit: &str) -> Result<()> {
        match self
            .run_job(unit, "stop", |m| async move {
                m.call("StopUnit", &(unit, "replace")).await
            })
            .await
        {
            Err(Error::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Queues a job with `call` and waits for systemd to finish it.
    async fn run_job<F, Fut>(&self, unit: &str, verb: &str, call: F) -> Result<()>
    where
        F: FnOnce(zbus::Proxy<'static>) -> Fut,
        Fut: std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        // Listen before asking, so the job's end cannot slip past.
        let mut removed = self
            .manager
            .receive_signal("JobRemoved")
            .await
            .map_err(dbus_err("listen for JobRemoved"))?;
        let job = match call(self.manager.clone()).await {
            Ok(job) => job,
            Err(e) if is_no_such_unit(&e) => {
                return Err(Error::NotFound(format!("systemd has no unit {unit}")))
            }
            Err(e) => return Err(Error::Internal(format!("systemd: {verb} {unit}: {e}"))),
        };
        let wait = async {
            use std::pin::Pin;
            loop {
                let next = std::future::poll_fn(|cx| {
                    futures_core::Stream::poll_next(Pin::new(&mut removed), cx)
                })
                .await;
                let Some(msg) = next else {
                    return Err(Error::Internal(format!(
                        "systemd: the bus closed while waiting to {verb} {unit}"
                    )));
                };
                let Ok((_, path, _, result)) = msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path == job {
                    return match result.as_str() {
                        "done" => Ok(()),
                        other => Err(Error::Internal(format!(
                            "systemd: {verb} {unit}: the job ended {other:?}"
                        ))),
                    };
                }
            }
        };
        tokio::time::timeout(JOB_TIMEOUT, wait).await.map_err(|_| {
            Error::Internal(format!(
                "systemd: {verb} {unit}: no answer within {}s",
                JOB_TIMEOUT.as_secs()
            ))
        })?
    }
}

/// Stops the units a sandbox recorded (its scope, then the slices that appeared for it,
/// innermost first). A slice that now holds other cgroups is someone else's too: it stays.
pub async fn stop_units(units: &[String], layout: &super::Layout) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    let sd = Systemd::connect().await?;
    for u in units {
        if u.ends_with(".slice") {
            let in_use = expand(u)
                .map(|rel| {
                    layout
                        .dirs(&rel)
                        .iter()
                        .any(|d| super::has_child_cgroups(d))
                })
                .unwrap_or(false);
            if in_use {
                log::debug!("slice {u} holds other cgroups; kept");
                continue;
            }
        }
        sd.stop(u).await?;
    }
    Ok(())
}

/// [`stop_units`] from outside the server (the `delete` command after a crash).
pub fn stop_units_blocking(units: &[String], layout: &super::Layout) -> Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("build a runtime for systemd", e))?
        .block_on(stop_units(units, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(
            expand("kubepods-besteffort-pod1a2b.slice").unwrap(),
            PathBuf::from(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b.slice"
            )
        );
        assert_eq!(
            expand("system.slice").unwrap(),
            PathBuf::from("/system.slice")
        );
        assert_eq!(expand("-.slice").unwrap(), PathBuf::from("/"));
        assert_eq!(
            ancestry("a-b.slice").unwrap(),
            vec!["a.slice".to_string(), "a-b.slice".to_string()]
        );
    }

    #[test]
    fn bad_slice_names_are_invalid_arguments() {
        for name in [
            "kubepods",
            ".slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a b.slice",
            "a/b.slice",
        ] {
            assert!(
                matches!(validate_slice(name), Err(Error::InvalidArgument(_))),
                "{name}"
            );
        }
        validate_slice("kubepods-burstable-pod0c3e_4f.slice").unwrap();
    }

    #[test]
    fn forms_are_told_apart() {
        assert!(is_slice("kubepods-besteffort-pod1.slice"));
        assert!(!is_slice("/kubepods/besteffort/pod1"));
        assert!(!is_slice("/kubepods.slice/x.slice"));
        assert!(is_systemd_cgroups_path(
            "kubepods-pod1.slice:cri-containerd:abc"
        ));
        assert!(!is_systemd_cgroups_path("/kubepods/pod1/abc"));
        assert!(!is_systemd_cgroups_path("/a:b:c"));
        assert_eq!(scope_name("abc"), "cri-containerd-abc.scope");
    }
}
