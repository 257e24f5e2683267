//! Burst: M pods started at once; wall time until every one is READY with a running
//! container.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::cri::{assert_ready, start_pods, teardown_pods, Handler, COVE, RUNC};
use crate::leftovers::leftovers;

/// Burst rounds per handler; the median wall time is reported.
pub const BURST_ROUNDS: usize = 3;

/// Wall time of M pods started at once until all are READY with a running container.
pub async fn burst(cd: &Arc<Containerd>, m: usize) -> BTreeMap<Handler, Vec<Duration>> {
    let mut out = BTreeMap::<Handler, Vec<Duration>>::new();
    for round in 0..BURST_ROUNDS {
        let order = if round % 2 == 0 {
            [COVE, RUNC]
        } else {
            [RUNC, COVE]
        };
        for h in order {
            let t = Instant::now();
            let pods = start_pods(cd, h, &format!("b{round}-"), 0..m, m).await;
            out.entry(h).or_default().push(t.elapsed());
            assert_ready(cd, &pods).await;
            teardown_pods(cd, pods, m).await;
            let left = leftovers(cd);
            assert!(left.is_empty(), "after a {} burst: {left:?}", h.name);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}
