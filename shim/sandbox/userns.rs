//! A pod's user namespace request (`hostUsers: false` reaches the shim as CRI's
//! `namespace_options.userns_options`, mode POD with uid and gid mappings).
//!
//! cove does not create user-namespaced pods yet: their containers need runc's idmapped
//! mounts (runc 1.2 and later), and cove reports user namespaces unsupported exactly when
//! its runc lacks them (`-info`, runc's own features), so kubelet sends no such pod. A
//! client that sends one anyway gets UNIMPLEMENTED, never a pod silently left in the
//! host's user namespace; malformed mappings get INVALID_ARGUMENT first.

use crate::error::{Error, Result};
use crate::protos::cri::{IDMapping, NamespaceMode, UserNamespace};

/// The most extents a `uid_map` or `gid_map` takes (Linux 4.15 and later:
/// user_namespaces(7)).
pub const MAX_EXTENTS: usize = 340;

/// Checks a pod's user namespace request; `Ok` means the host's user namespace.
pub fn check(pod: &str, userns: Option<&UserNamespace>) -> Result<()> {
    let Some(u) = userns else {
        return Ok(());
    };
    let bad = |why: String| {
        Err(Error::InvalidArgument(format!(
            "pod {pod}: user namespace: {why}"
        )))
    };
    match u.mode.enum_value() {
        Ok(NamespaceMode::NODE) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return bad("mode NODE (the host's user namespace) takes no mappings".into());
            }
            Ok(())
        }
        Ok(NamespaceMode::POD) => {
            check_mappings("uid", &u.uids).or_else(&bad)?;
            check_mappings("gid", &u.gids).or_else(&bad)?;
            Err(Error::Unimplemented(format!(
                "pod {pod}: user-namespaced pods (hostUsers: false) are not supported by \
                 cove yet: their containers need runc's idmapped mounts (runc 1.2+), and cove \
                 reports the feature only where its runc has them"
            )))
        }
        other => bad(format!(
            "mode {} is not one a pod can have (POD or NODE)",
            other
                .map(|m| format!("{m:?}"))
                .unwrap_or_else(|v| v.to_string())
        )),
    }
}

/// What the kernel would refuse in a `uid_map`/`gid_map` write, or a mapping that maps
/// nothing: none, too many, empty, past the end of the id space, overlapping.
fn check_mappings(kind: &str, maps: &[IDMapping]) -> std::result::Result<(), String> {
    if maps.is_empty() {
        return Err(format!("mode POD needs {kind} mappings"));
    }
    if maps.len() > MAX_EXTENTS {
        return Err(format!(
            "{} {kind} mappings, more than the kernel takes ({MAX_EXTENTS})",
            maps.len()
        ));
    }
    let mut host = Vec::with_capacity(maps.len());
    let mut inside = Vec::with_capacity(maps.len());
    for m in maps {
        if m.length == 0 {
            return Err(format!(
                "{kind} mapping {} -> {} has length 0",
                m.container_id, m.host_id
            ));
        }
        let end = |start: u32| u64::from(start) + u64::from(m.length);
        if end(m.host_id) > 1 << 32 || end(m.container_id) > 1 << 32 {
            return Err(format!(
                "{kind} mapping {} -> {} of length {} runs past the last id",
                m.container_id, m.host_id, m.length
            ));
        }
        host.push((u64::from(m.host_id), end(m.host_id)));
        inside.push((u64::from(m.container_id), end(m.container_id)));
    }
    for (side, mut ranges) in [("host", host), ("container", inside)] {
        ranges.sort();
        if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
            return Err(format!(
                "{kind} mappings overlap on the {side} side ({}..{} and {}..{})",
                w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(container_id: u32, host_id: u32, length: u32) -> IDMapping {
        IDMapping {
            host_id,
            container_id,
            length,
            ..Default::default()
        }
    }

    fn userns(mode: NamespaceMode, uids: Vec<IDMapping>, gids: Vec<IDMapping>) -> UserNamespace {
        UserNamespace {
            mode: mode.into(),
            uids,
            gids,
            ..Default::default()
        }
    }

    fn code(r: Result<()>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(Error::InvalidArgument(_)) => "invalid",
            Err(Error::Unimplemented(_)) => "unimplemented",
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn no_request_and_node_mode_are_the_hosts() {
        assert_eq!(code(check("p", None)), "ok");
        let node = userns(NamespaceMode::NODE, vec![], vec![]);
        assert_eq!(code(check("p", Some(&node))), "ok");
    }

    #[test]
    fn a_valid_pod_request_is_refused_plainly_not_ignored() {
        // What kubelet sends: 65536 ids from a per-pod offset.
        let kubelet = map(0, 65536 * 3, 65536);
        let u = userns(NamespaceMode::POD, vec![kubelet.clone()], vec![kubelet]);
        match check("p", Some(&u)) {
            Err(Error::Unimplemented(m)) => assert!(m.contains("hostUsers: false"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_mappings_are_invalid_arguments() {
        let ok = map(0, 100_000, 65536);
        let cases = [
            userns(NamespaceMode::NODE, vec![ok.clone()], vec![]),
            userns(NamespaceMode::CONTAINER, vec![ok.clone()], vec![ok.clone()]),
            userns(NamespaceMode::TARGET, vec![], vec![]),
            userns(NamespaceMode::POD, vec![], vec![ok.clone()]),
            userns(NamespaceMode::POD, vec![ok.clone()], vec![]),
            userns(NamespaceMode::POD, vec![map(0, 1000, 0)], vec![ok.clone()]),
            userns(
                NamespaceMode::POD,
                vec![map(0, u32::MAX, 2)],
                vec![ok.clone()],
            ),
            userns(
                NamespaceMode::POD,
                vec![map(u32::MAX, 0, 2)],
                vec![ok.clone()],
            ),
            // Overlapping on the host side, then on the container side.
            userns(
                NamespaceMode::POD,
                vec![map(0, 1000, 10), map(100, 1005, 10)],
                vec![ok.clone()],
            ),
            userns(
                NamespaceMode::POD,
                vec![ok.clone()],
                vec![map(0, 1000, 10), map(5, 5000, 10)],
            ),
            userns(
                NamespaceMode::POD,
                (0..=MAX_EXTENTS as u32)
                    .map(|i| map(i, 1000 + i, 1))
                    .collect(),
                vec![ok.clone()],
            ),
        ];
        for u in &cases {
            assert_eq!(code(check("p", Some(u))), "invalid", "{u:?}");
        }
        // Adjacent ranges and the full limit of extents are fine.
        let adjacent = vec![map(0, 1000, 10), map(10, 1010, 10)];
        let most: Vec<IDMapping> = (0..MAX_EXTENTS as u32)
            .map(|i| map(i, 1000 + i, 1))
            .collect();
        for uids in [adjacent, most] {
            let u = userns(NamespaceMode::POD, uids, vec![ok.clone()]);
            assert_eq!(code(check("p", Some(&u))), "unimplemented");
        }
    }
}
