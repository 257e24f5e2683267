//! Serial: one pod after another per handler, alternating, with the shim-alone and floor
//! rounds between them; each phase's samples.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use crate::cri::{pod_with_container, teardown, Handler, COVE, RUNC};
use crate::shim_alone::{Rounds, ShimSamples};

/// Serial rounds run first and not counted (cold caches, first CNI call).
pub const WARMUP: usize = 2;

pub const RUN: &str = "RunPodSandbox";
pub const START: &str = "CreateContainer+StartContainer";
pub const DOWN: &str = "StopPodSandbox+RemovePodSandbox";
/// The network share of RunPodSandbox and of the teardown (netns and CNI, done by
/// containerd alike for both handlers), from containerd's own timers, and the rest.
pub const RUN_NET: &str = "RunPodSandbox: network setup (containerd: netns + CNI ADD)";
pub const RUN_REST: &str = "RunPodSandbox without the network setup";
pub const DOWN_NET: &str = "Teardown: network teardown (containerd: CNI DEL, netns)";
pub const DOWN_REST: &str = "Teardown without the network teardown";
pub const NET_UP: &str = "containerd_cri_sandbox_create_network_seconds_sum";
pub const NET_DOWN: &str = "containerd_cri_sandbox_delete_network_seconds_sum";

pub type Samples = BTreeMap<(&'static str, Handler), Vec<Duration>>;

/// What a serial round runs: a pod through CRI, a round of the shim alone, or one of the
/// floors.
#[derive(Clone, Copy)]
enum Turn {
    Cri(Handler),
    Shim,
    Floor,
}

/// `n` rounds (after `WARMUP` not counted), each with a cove pod and a runc pod through CRI,
/// a round of cove's shim alone over ttrpc and a round of the floors, in an order that
/// rotates from round to round, so that drift hits all four alike. The shim-alone and
/// floor samples come back as the second value.
pub async fn serial(cd: &Containerd, n: usize) -> (Samples, ShimSamples) {
    let mut s = Samples::new();
    let mut rounds = Rounds::new();
    let turns = [Turn::Cri(COVE), Turn::Shim, Turn::Cri(RUNC), Turn::Floor];
    for i in 0..WARMUP + n {
        let counted = i >= WARMUP;
        for k in 0..turns.len() {
            let h = match turns[(i + k) % turns.len()] {
                Turn::Cri(h) => h,
                Turn::Shim => {
                    rounds.cove(i, counted).await;
                    continue;
                }
                Turn::Floor => {
                    rounds.floor(i, counted).await;
                    continue;
                }
            };
            let up0 = cd.metric(NET_UP);
            let (pod, run, start) = pod_with_container(cd, h, &format!("s{i}-{}", h.name)).await;
            let net_up = Duration::from_secs_f64(cd.metric(NET_UP) - up0);
            let down0 = cd.metric(NET_DOWN);
            let down = teardown(cd, &pod).await;
            let net_down = Duration::from_secs_f64(cd.metric(NET_DOWN) - down0);
            if counted {
                for (phase, d) in [
                    (RUN, run),
                    (START, start),
                    (DOWN, down),
                    (RUN_NET, net_up),
                    (RUN_REST, run.saturating_sub(net_up)),
                    (DOWN_NET, net_down),
                    (DOWN_REST, down.saturating_sub(net_down)),
                ] {
                    s.entry((phase, h)).or_default().push(d);
                }
            }
        }
    }
    for v in s.values_mut() {
        v.sort();
    }
    (s, rounds.samples())
}
