//! Which process of a multi-process job this is: rank, world size, local rank, and where rank 0
//! waits for the others, read from the variables the launchers users already know set.
//!
//! | launcher | rank | world size | local rank | local world size |
//! | --- | --- | --- | --- | --- |
//! | torchrun, `prefer launch` | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `LOCAL_WORLD_SIZE` |
//! | Open MPI (`mpirun`) | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | `OMPI_COMM_WORLD_LOCAL_SIZE` |
//! | Slurm (`srun`) | `SLURM_PROCID` | `SLURM_STEP_NUM_TASKS` | `SLURM_LOCALID` | `SLURM_STEP_TASKS_PER_NODE` |
//!
//! The first launcher whose rank variable is set wins, in that order (torchrun inside a Slurm
//! allocation sets both; its own variables describe the job). Slurm's count only when srun
//! started this process (`SLURM_STEP_ID` or `SLURM_STEP_NUM_TASKS` is set): a batch script
//! itself also sees `SLURM_PROCID=0` and the allocation's `SLURM_NTASKS`, and a prefer run
//! there is one process. Rank 0's address is
//! `MASTER_ADDR`:`MASTER_PORT` for every launcher (Slurm and MPI users export them, as with
//! torchrun). Nothing set means one process, rank 0 of 1.

use anyhow::{bail, Context, Result};

/// torchrun's default port for the rendezvous, used when `MASTER_PORT` is not set.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    /// Where rank 0 serves the rendezvous: `MASTER_ADDR`:`MASTER_PORT`.
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher the variables came from, for messages: "torchrun", "Open MPI", "Slurm" or
    /// "none".
    pub launcher: &'static str,
}

impl World {
    /// One process: rank 0 of 1, which makes no collective call at all.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
            launcher: "none",
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<World> {
        World::from_vars(|name| std::env::var(name).ok())
    }

    /// From the variables `var` returns (the environment, or a test's table).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<World> {
        // (launcher, rank, size, local rank, local size)
        const LAUNCHERS: [(&str, &str, &str, &str, &str); 3] = [
            (
                "torchrun",
                "RANK",
                "WORLD_SIZE",
                "LOCAL_RANK",
                "LOCAL_WORLD_SIZE",
            ),
            (
                "Open MPI",
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
                "OMPI_COMM_WORLD_LOCAL_SIZE",
            ),
            (
                "Slurm",
                "SLURM_PROCID",
                "SLURM_NTASKS",
                "SLURM_LOCALID",
                "SLURM_NTASKS_PER_NODE",
            ),
        ];
        let in_srun_step = var("SLURM_STEP_ID").is_some() || var("SLURM_STEP_NUM_TASKS").is_some();
        let Some(&(launcher, rank_var, size_var, local_var, local_size_var)) =
            LAUNCHERS.iter().find(|(launcher, rank, ..)| {
                var(rank).is_some_and(|v| !v.trim().is_empty())
                    && (*launcher != "Slurm" || in_srun_step)
            })
        else {
            return Ok(World::single());
        };
        // In an srun step, the step's counts (the job's may be larger).
        let (size_var, local_size_var) = match launcher {
            "Slurm" if var("SLURM_STEP_NUM_TASKS").is_some() => {
                ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE")
            }
            _ => (size_var, local_size_var),
        };
        let number = |name: &str, required: bool| -> Result<Option<usize>> {
            match var(name).map(|v| v.trim().to_string()) {
                None if required => bail!(
                    "{rank_var} is set ({launcher}) but {name} is not: set both, or neither for one process"
                ),
                None => Ok(None),
                Some(v) => v.parse::<usize>().map(Some).with_context(|| {
                    format!("{name}={v:?} ({launcher}) is not a whole number")
                }),
            }
        };
        let rank = number(rank_var, true)?.unwrap_or(0);
        let size = number(size_var, true)?.unwrap_or(1);
        if size == 0 || size > 65_536 {
            bail!("{size_var}={size} ({launcher}): a world of 1 to 65536 processes");
        }
        if rank >= size {
            bail!("{rank_var}={rank} is not below {size_var}={size} ({launcher})");
        }
        // Slurm writes tasks per node as "4", "4(x2)" or "2,1": the first node's count.
        let local_size = match var(local_size_var) {
            Some(v) if launcher == "Slurm" => {
                let head = v.split(['(', ',']).next().unwrap_or("").trim().to_string();
                Some(head.parse::<usize>().with_context(|| {
                    format!("{local_size_var}={v:?} ({launcher}) is not a task count")
                })?)
            }
            _ => number(local_size_var, false)?,
        };
        let local_rank = number(local_var, false)?;
        let (local_rank, local_size) = match (local_rank, local_size) {
            (Some(r), Some(s)) => (r, s),
            (Some(r), None) => (r, size),
            // Without a local rank, every process is taken to be on its own node.
            (None, _) => (0, 1),
        };
        if local_size == 0 || local_rank >= local_size || local_size > size {
            bail!(
                "{local_var}={local_rank} and {local_size_var}={local_size} ({launcher}) do not fit a world of {size}"
            );
        }
        let master_addr = var("MASTER_ADDR")
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let master_port = match var("MASTER_PORT").map(|p| p.trim().to_string()) {
            None => DEFAULT_MASTER_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => bail!("MASTER_PORT={p:?} is not a TCP port (1 to 65535)"),
            },
        };
        if size > 1 && var("MASTER_ADDR").is_none() && local_size < size {
            bail!(
                "{size_var}={size} spans several nodes ({local_size_var}={local_size}) but MASTER_ADDR is not set: \
                 export MASTER_ADDR (rank 0's host) and MASTER_PORT on every node"
            );
        }
        Ok(World {
            rank,
            size,
            local_rank,
            local_size,
            master_addr,
            master_port,
            launcher,
        })
    }

    pub fn is_single(&self) -> bool {
        self.size == 1
    }

    /// One line for logs: "rank 1 of 4 (local 1 of 4, torchrun), rank 0 at 127.0.0.1:29500".
    pub fn describe(&self) -> String {
        if self.is_single() {
            return "one process (no launcher variables set)".into();
        }
        format!(
            "rank {} of {} (local {} of {}, from {}'s variables), rank 0 at {}:{}",
            self.rank,
            self.size,
            self.local_rank,
            self.local_size,
            self.launcher,
            self.master_addr,
            self.master_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<World> {
        let table: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(|name| table.get(name).cloned())
    }

    #[test]
    fn nothing_set_is_one_process() {
        assert_eq!(world(&[]).unwrap(), World::single());
    }

    #[test]
    fn torchrun_variables_set_by_hand() {
        let w = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "3"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29611"),
        ])
        .unwrap();
        assert_eq!(
            (w.rank, w.size, w.local_rank, w.local_size, w.launcher),
            (3, 4, 3, 4, "torchrun")
        );
        assert_eq!((w.master_addr.as_str(), w.master_port), ("10.0.0.7", 29611));
    }

    #[test]
    fn slurm_and_open_mpi() {
        let w = world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_STEP_TASKS_PER_NODE", "4(x2)"),
            ("MASTER_ADDR", "node01"),
        ])
        .unwrap();
        assert_eq!(
            (w.rank, w.size, w.local_rank, w.local_size, w.launcher),
            (5, 8, 1, 4, "Slurm")
        );
        assert_eq!(w.master_port, DEFAULT_MASTER_PORT);
        // A batch script itself (no srun step) sees rank 0 of the allocation: one process.
        let w = world(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap();
        assert_eq!(w, World::single());
        let w = world(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.size, w.launcher), (1, 2, "Open MPI"));
        // torchrun inside a Slurm allocation: torchrun's variables describe the job.
        let w = world(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "2"),
            ("LOCAL_WORLD_SIZE", "4"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.size, w.launcher), (2, 4, "torchrun"));
    }

    #[test]
    fn bad_variables_are_named() {
        let err = |vars: &[(&str, &str)]| format!("{:#}", world(vars).unwrap_err());
        assert!(err(&[("RANK", "1")]).contains("WORLD_SIZE is not"));
        assert!(err(&[("RANK", "4"), ("WORLD_SIZE", "4")]).contains("RANK=4 is not below"));
        assert!(err(&[("RANK", "x"), ("WORLD_SIZE", "4")]).contains("RANK=\"x\""));
        assert!(err(&[("RANK", "0"), ("WORLD_SIZE", "0")]).contains("WORLD_SIZE=0"));
        assert!(
            err(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")])
                .contains("MASTER_PORT=\"70000\"")
        );
        assert!(err(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "2"),
            ("LOCAL_WORLD_SIZE", "2")
        ])
        .contains("do not fit"));
        assert!(err(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_STEP_TASKS_PER_NODE", "4(x2)")
        ])
        .contains("MASTER_ADDR is not set"));
    }
}
