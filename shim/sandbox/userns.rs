//! A pod's user namespace request (`hostUsers: false` reaches the shim as CRI's
//! `namespace_options.userns_options`, mode POD with uid and gid mappings).
//!
//! The pause is created in a new user namespace with exactly these mappings (see
//! `pause`); containers join it by path, and runc gives them idmapped mounts (runc 1.2
//! and later, which is when `-info` reports user namespaces: CRI sends no such pod to a
//! handler whose runc lacks them). Malformed mappings get INVALID_ARGUMENT, before
//! anything is created.

use crate::error::{Error, Result};
use crate::idmap::{Extent, Mappings};
use crate::pause::{PAUSE_GID, PAUSE_UID};
use crate::protos::cri::{IDMapping, NamespaceMode, UserNamespace};

/// The most extents a `uid_map` or `gid_map` takes (Linux 4.15 and later:
/// user_namespaces(7)).
pub const MAX_EXTENTS: usize = 340;

/// Checks a pod's user namespace request: the mappings of its own user namespace, or
/// `None` for the host's.
pub fn check(pod: &str, userns: Option<&UserNamespace>) -> Result<Option<Mappings>> {
    let Some(u) = userns else {
        return Ok(None);
    };
    let invalid = |why: String| Error::InvalidArgument(format!("pod {pod}: user namespace: {why}"));
    let bad = |why: String| Err(invalid(why));
    match u.mode.enum_value() {
        Ok(NamespaceMode::NODE) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return bad("mode NODE (the host's user namespace) takes no mappings".into());
            }
            Ok(None)
        }
        Ok(NamespaceMode::POD) => {
            check_mappings("uid", &u.uids).map_err(invalid)?;
            check_mappings("gid", &u.gids).map_err(invalid)?;
            let extents = |maps: &[IDMapping]| -> Vec<Extent> {
                maps.iter()
                    .map(|m| Extent {
                        inside: m.container_id,
                        host: m.host_id,
                        length: m.length,
                    })
                    .collect()
            };
            let maps = Mappings {
                uids: extents(&u.uids),
                gids: extents(&u.gids),
            };
            // The pause becomes root there, then runs as the pause image's user; kubelet
            // maps 65536 ids, which hold both.
            for (uid, gid) in [(0, 0), (PAUSE_UID, PAUSE_GID)] {
                if maps.host_uid(uid).is_none() || maps.host_gid(gid).is_none() {
                    return bad(format!(
                        "the mappings must map uid {uid} and gid {gid} (the pause runs as \
                         root, then as {PAUSE_UID}:{PAUSE_GID})"
                    ));
                }
            }
            // Host root inside the pod would undo what the user namespace is for.
            if maps.uids.iter().chain(&maps.gids).any(|e| e.host == 0) {
                return bad("the mappings must not map the host's root (id 0)".into());
            }
            Ok(Some(maps))
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

    fn code(r: Result<Option<Mappings>>) -> &'static str {
        match r {
            Ok(None) => "host",
            Ok(Some(_)) => "own",
            Err(Error::InvalidArgument(_)) => "invalid",
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn no_request_and_node_mode_are_the_hosts() {
        assert_eq!(code(check("p", None)), "host");
        let node = userns(NamespaceMode::NODE, vec![], vec![]);
        assert_eq!(code(check("p", Some(&node))), "host");
    }

    #[test]
    fn a_pod_request_gives_the_pods_mappings() {
        // What kubelet sends: 65536 ids from a per-pod offset.
        let kubelet = map(0, 65536 * 3, 65536);
        let u = userns(NamespaceMode::POD, vec![kubelet.clone()], vec![kubelet]);
        let maps = check("p", Some(&u)).unwrap().unwrap();
        assert_eq!(maps.host_uid(0), Some(65536 * 3));
        assert_eq!(maps.host_gid(PAUSE_GID), Some(65536 * 3 + PAUSE_GID));
        // Mappings that leave out the pause's ids (65535, then root), or map host root.
        for (m, says) in [
            (map(0, 65536 * 3, 1000), "65535"),
            (map(1, 65536 * 3, 65535), "uid 0 and gid 0"),
            (map(0, 0, 65536), "host's root"),
        ] {
            let u = userns(NamespaceMode::POD, vec![m.clone()], vec![m]);
            match check("p", Some(&u)) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(says), "{msg}"),
                other => panic!("{other:?}"),
            }
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
        let adjacent = vec![map(0, 1000, 10), map(10, 1010, 65526)];
        let mut most: Vec<IDMapping> = (0..MAX_EXTENTS as u32 - 1)
            .map(|i| map(i, 1000 + i, 1))
            .collect();
        most.push(map(PAUSE_UID, 200_000, 1));
        for uids in [adjacent, most] {
            let u = userns(NamespaceMode::POD, uids, vec![ok.clone()]);
            assert_eq!(code(check("p", Some(&u))), "own");
        }
    }
}
