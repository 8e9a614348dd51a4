//! Slurm as a launcher: read the allocation this process runs in from the
//! environment Slurm sets up, and turn it into one `srun` command prefix per
//! worker, spread over the allocated nodes.
//!
//! Owns the reading of `SLURM_*` variables and the shape of the `srun`
//! command, nothing else: workers started this way are ordinary launched
//! workers (see `remote`), and scheduling stays on the host.

use std::process::Command;

use crate::error::Error;

/// The Slurm allocation this process runs in (under `salloc` or in an
/// `sbatch` script), and the `srun` launchers that start workers on its
/// nodes.
///
/// ```no_run
/// use wpool::slurm::Slurm;
/// use wpool::{Kernel, Pool};
/// // Inside `salloc -N2 -n8 ./my-program`:
/// let slurm = Slurm::from_env()?;
/// let mut pool = Pool::builder(Kernel::from_file("kernel.wasm")?)
///     .workers(slurm.tasks)
///     .launchers(slurm.launchers(slurm.tasks))
///     .build()?;
/// # Ok::<(), wpool::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Slurm {
    /// The job id (`SLURM_JOB_ID`).
    pub job_id: String,
    /// Tasks of the allocation (`SLURM_NTASKS`): the natural worker count.
    pub tasks: usize,
    /// The allocated nodes, each with its number of tasks
    /// (`SLURM_JOB_NODELIST`, `SLURM_TASKS_PER_NODE`).
    pub nodes: Vec<(String, usize)>,
}

/// Why the Slurm allocation could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlurmError {
    /// `SLURM_JOB_ID` is not set.
    #[error("not inside a Slurm allocation (SLURM_JOB_ID is not set): run under salloc or in an sbatch script")]
    NoAllocation,
    /// Neither `SLURM_JOB_NODELIST` nor `SLURM_NODELIST` is set.
    #[error("job {job}: SLURM_JOB_NODELIST is not set")]
    NoNodeList {
        /// The job id.
        job: String,
    },
    /// A variable Slurm sets does not have the form Slurm gives it.
    #[error("cannot read {name}={value:?}")]
    BadVariable {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// `SLURM_TASKS_PER_NODE` and the node list disagree.
    #[error("SLURM_TASKS_PER_NODE gives {counts} counts for the {nodes} nodes of {list}")]
    TaskCountMismatch {
        /// Task counts given.
        counts: usize,
        /// Nodes in the list.
        nodes: usize,
        /// The node list.
        list: String,
    },
    /// The job has no tasks.
    #[error("job {job} has no tasks")]
    NoTasks {
        /// The job id.
        job: String,
    },
    /// `scontrol` could not be run.
    #[error("running `scontrol show hostnames {list}`")]
    Scontrol {
        /// The node list.
        list: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `scontrol` failed.
    #[error("`scontrol show hostnames {list}` failed ({status}): {stderr}")]
    ScontrolFailed {
        /// The node list.
        list: String,
        /// How it exited.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// The node list expands to no node.
    #[error("node list {list:?} names no nodes")]
    NoNodes {
        /// The node list.
        list: String,
    },
}

impl Slurm {
    /// Reads the allocation from `SLURM_JOB_ID`, `SLURM_JOB_NODELIST`
    /// (expanded by `scontrol show hostnames`), `SLURM_TASKS_PER_NODE` and
    /// `SLURM_NTASKS`.
    pub fn from_env() -> Result<Slurm, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let job_id = var("SLURM_JOB_ID").ok_or(SlurmError::NoAllocation)?;
        let list = var("SLURM_JOB_NODELIST")
            .or_else(|| var("SLURM_NODELIST"))
            .ok_or_else(|| SlurmError::NoNodeList { job: job_id.clone() })?;
        let names = expand_nodelist(&list)?;
        let counts = match var("SLURM_TASKS_PER_NODE") {
            Some(spec) => parse_tasks_per_node(&spec)
                .ok_or_else(|| SlurmError::BadVariable { name: "SLURM_TASKS_PER_NODE", value: spec.clone() })?,
            None => vec![1; names.len()],
        };
        if counts.len() != names.len() {
            return Err(SlurmError::TaskCountMismatch { counts: counts.len(), nodes: names.len(), list }.into());
        }
        let nodes: Vec<(String, usize)> = names.into_iter().zip(counts).collect();
        let tasks = match var("SLURM_NTASKS") {
            Some(n) => n.parse().map_err(|_| SlurmError::BadVariable { name: "SLURM_NTASKS", value: n.clone() })?,
            None => nodes.iter().map(|(_, n)| n).sum(),
        };
        if tasks == 0 {
            return Err(SlurmError::NoTasks { job: job_id }.into());
        }
        Ok(Slurm { job_id, tasks, nodes })
    }

    /// One launcher per worker for `workers` workers: `srun` starting one
    /// task on one node as a step of this job (`--exact`, so that steps run
    /// side by side), nodes taken in turn (node1, node2, node1, …) as far
    /// as each has tasks, then round again. More workers than tasks share
    /// the allocated CPUs (`--overlap`); otherwise the extra steps would
    /// wait for CPUs that never free up.
    pub fn launchers(&self, workers: usize) -> Vec<Vec<String>> {
        self.launchers_among(workers, workers)
    }

    /// Like [`Slurm::launchers`], for one of several pools alive at once
    /// (the stages of a pipeline, MapReduce's two pools) that start
    /// `all_workers` in all: they overlap when those outnumber the tasks.
    pub fn launchers_among(&self, workers: usize, all_workers: usize) -> Vec<Vec<String>> {
        let most = self.nodes.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let mut order: Vec<&str> = (0..most)
            .flat_map(|round| self.nodes.iter().filter(move |(_, n)| *n > round).map(|(name, _)| name.as_str()))
            .collect();
        if order.is_empty() {
            order = self.nodes.iter().map(|(name, _)| name.as_str()).collect();
        }
        if order.is_empty() {
            return Vec::new();
        }
        (0..workers)
            .map(|i| {
                let mut srun: Vec<String> =
                    ["srun", "--jobid", &self.job_id, "--nodes=1", "--ntasks=1", "--exact", "--unbuffered"]
                        .map(String::from)
                        .to_vec();
                if workers.max(all_workers) > self.tasks {
                    srun.push("--overlap".into());
                }
                srun.extend(["--nodelist".to_string(), order[i % order.len()].to_string()]);
                srun
            })
            .collect()
    }
}

/// `node[1-2],gpu01` → its host names, as Slurm itself expands them.
fn expand_nodelist(list: &str) -> Result<Vec<String>, Error> {
    let out = Command::new("scontrol")
        .args(["show", "hostnames", list])
        .output()
        .map_err(|source| SlurmError::Scontrol { list: list.to_string(), source })?;
    if !out.status.success() {
        return Err(SlurmError::ScontrolFailed {
            list: list.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
    if names.is_empty() {
        return Err(SlurmError::NoNodes { list: list.to_string() }.into());
    }
    Ok(names)
}

/// `2(x3),1` → `[2, 2, 2, 1]`.
fn parse_tasks_per_node(spec: &str) -> Option<Vec<usize>> {
    let mut counts = Vec::new();
    for part in spec.split(',') {
        let (n, times) = match part.split_once("(x") {
            Some((n, rest)) => (n, rest.strip_suffix(')')?.parse().ok()?),
            None => (part, 1),
        };
        let n: usize = n.trim().parse().ok()?;
        counts.extend(std::iter::repeat_n(n, times));
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_per_node_expands_repeats() {
        assert_eq!(parse_tasks_per_node("2(x3),1"), Some(vec![2, 2, 2, 1]));
        assert_eq!(parse_tasks_per_node("4"), Some(vec![4]));
        assert_eq!(parse_tasks_per_node("2(x"), None);
        assert_eq!(parse_tasks_per_node("x"), None);
    }

    #[test]
    fn launchers_take_nodes_in_turn() {
        let s = Slurm { job_id: "7".into(), tasks: 5, nodes: vec![("a".into(), 3), ("b".into(), 2)] };
        let nodes: Vec<String> = s.launchers(6).iter().map(|l| l.last().unwrap().clone()).collect();
        assert_eq!(nodes, ["a", "b", "a", "b", "a", "a"]);
        assert_eq!(s.launchers(1)[0][..3], ["srun", "--jobid", "7"]);
        assert!(!s.launchers(5)[0].contains(&"--overlap".to_string()));
        assert!(s.launchers(6)[0].contains(&"--overlap".to_string()));
    }
}
