//! Which full runs finished: `target/bench/runs.log` gets a `begin` line when a full run
//! starts and an `end` line when it has finished without a failure, so that a report can
//! say how many runs of its commit and sizes in a row finished (a run that failed or was
//! stopped has no `end`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

pub struct RunLog {
    path: PathBuf,
    id: String,
    sizes: String,
}

impl RunLog {
    /// Records the start of a full run of `sizes` (what makes runs comparable: the commit
    /// and the sizes, without spaces around `=`).
    pub fn begin(out_dir: &Path, sizes: String) -> RunLog {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let log = RunLog {
            path: out_dir.join("runs.log"),
            id: format!("{since_epoch}-{}", std::process::id()),
            sizes,
        };
        log.append(&format!("begin {} {}", log.id, log.sizes));
        log
    }

    fn append(&self, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path.display()));
        writeln!(f, "{line}").unwrap_or_else(|e| panic!("write {}: {e}", self.path.display()));
    }

    /// Records that this run finished without a failure.
    pub fn end(&self) {
        self.append(&format!("end {}", self.id));
    }

    /// How many runs of the same sizes in a row finished, this one last (counted as
    /// `finished`).
    pub fn in_a_row(&self, finished: bool) -> usize {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let ended: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("end "))
            .collect();
        let mut runs: Vec<bool> = text
            .lines()
            .filter_map(|l| l.strip_prefix("begin "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(id, sizes)| *sizes == self.sizes && *id != self.id)
            .map(|(id, _)| ended.contains(&id))
            .collect();
        runs.push(finished);
        runs.iter().rev().take_while(|f| **f).count()
    }
}
