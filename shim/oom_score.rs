//! `oom_score_adj`: how cove keeps the kernel's OOM killer off its own processes, as
//! containerd's runc pod path does.
//!
//! - The shim server gets containerd's score + 1, as containerd's Go shims give themselves
//!   (`AdjustOOMScore` in containerd's `pkg/shim`): a shim is killed before containerd, and
//!   raising a score needs no privilege.
//! - The pause process asks for [`PAUSE_SCORE`], the score CRI gives the pause container
//!   (`defaultSandboxOOMAdj` in containerd's CRI). Lowering a score below the lowest one a
//!   privileged writer set for the process (`oom_score_adj_min`) needs CAP_SYS_RESOURCE; where
//!   that is refused, the pause takes the nearest value the kernel accepts, found by
//!   bisection, and the shim logs a warning. CRI with `restrict_oom_score_adj` clamps the
//!   pause container to containerd's own score for the same reason.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// What CRI gives the pause container (containerd `internal/cri/server`,
/// `defaultSandboxOOMAdj`).
pub const PAUSE_SCORE: i32 = -998;
/// The kernel's range (`OOM_SCORE_ADJ_MIN`, `OOM_SCORE_ADJ_MAX`).
pub const MIN: i32 = -1000;
pub const MAX: i32 = 1000;

/// The file of `pid`'s score (the calling process's with `None`), under `/proc`.
fn rel(pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("{p}/oom_score_adj"),
        None => "self/oom_score_adj".into(),
    }
}

fn path(pid: Option<u32>) -> PathBuf {
    Path::new("/proc").join(rel(pid))
}

fn parse(text: &str) -> std::io::Result<i32> {
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The score of `pid` (the calling process with `None`).
pub fn read(pid: Option<u32>) -> std::io::Result<i32> {
    parse(&std::fs::read_to_string(path(pid))?)
}

/// Sets the score of `pid` (the calling process with `None`).
pub fn write(pid: Option<u32>, score: i32) -> std::io::Result<()> {
    std::fs::write(path(pid), score.to_string())
}

/// The score a shim takes: its parent's + 1, within the kernel's range.
pub fn shim_score(parent: i32) -> i32 {
    parent.saturating_add(1).clamp(MIN, MAX)
}

/// Gives `pid` (the shim server) its parent's (containerd's) score + 1. Raising a score
/// needs no privilege, so this fails only when /proc does.
pub fn adjust_shim(pid: u32) -> std::io::Result<i32> {
    let parent = read(Some(nix::unistd::getppid().as_raw() as u32))?;
    let score = shim_score(parent);
    write(Some(pid), score)?;
    Ok(score)
}

/// Lowers the calling process's score to `target`, or where the kernel refuses that, to
/// the lowest score above it that it accepts. Returns the score now in force.
pub fn lower_own_towards(target: i32) -> std::io::Result<i32> {
    lower_towards(target, read(None)?, |s| write(None, s).is_ok())
}

/// [`lower_own_towards`], through `proc`, a descriptor of a `/proc` directory (the pause
/// helper's way: `/proc` is not in its mount namespace).
pub fn lower_own_towards_at(proc: BorrowedFd<'_>, target: i32) -> std::io::Result<i32> {
    use std::io::{Read, Write};
    let mut text = String::new();
    crate::sys::open_at(proc, &rel(None), OFlag::O_RDONLY)?.read_to_string(&mut text)?;
    let accept = |s: i32| {
        crate::sys::open_at(proc, &rel(None), OFlag::O_WRONLY)
            .map_err(std::io::Error::from)
            .and_then(|mut f| f.write_all(s.to_string().as_bytes()))
            .is_ok()
    };
    lower_towards(target, parse(&text)?, accept)
}

/// The bisection behind [`lower_own_towards`]: `accept(s)` sets score `s` and says whether
/// the kernel took it. The kernel accepts every score at or above a floor (the process's
/// `oom_score_adj_min`, or anything with CAP_SYS_RESOURCE), and `current` is accepted.
fn lower_towards(
    target: i32,
    current: i32,
    mut accept: impl FnMut(i32) -> bool,
) -> std::io::Result<i32> {
    if current <= target {
        return Ok(current);
    }
    if accept(target) {
        return Ok(target);
    }
    // Invariant: `lo` is refused, `hi` is accepted.
    let (mut lo, mut hi) = (target, current);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if accept(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if accept(hi) {
        Ok(hi)
    } else {
        Err(std::io::Error::other(format!(
            "oom_score_adj {hi} was accepted and then refused"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shim_is_one_above_its_parent_within_range() {
        assert_eq!(shim_score(0), 1);
        assert_eq!(shim_score(-999), -998);
        assert_eq!(shim_score(1000), 1000);
        assert_eq!(shim_score(-1000), -999);
    }

    #[test]
    fn lowering_takes_the_target_or_the_nearest_accepted_score() {
        for floor in [-1000, -998, -997, -500, 0, 1, 300] {
            for current in [floor, floor + 1, 500, 1000] {
                if current < floor {
                    continue;
                }
                let mut now = current;
                let got = lower_towards(PAUSE_SCORE, current, |s| {
                    let ok = s >= floor;
                    if ok {
                        now = s;
                    }
                    ok
                })
                .unwrap();
                let want = PAUSE_SCORE.max(floor).min(current);
                assert_eq!(got, want, "floor {floor}, current {current}");
                assert_eq!(now, want, "the score left in force");
            }
        }
    }

    #[test]
    fn the_calling_process_can_be_read() {
        let s = read(None).unwrap();
        assert!((MIN..=MAX).contains(&s));
    }
}
