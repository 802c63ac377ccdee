//! Where a trainer's options come from, written once for every trainer: flags, then `--config`,
//! then a resumed run's run.toml, then the trainer's defaults. A resumed run refuses changed
//! options (only the machine's, such as `--device`, may change).

use super::run_args::RunArgs;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

/// A trainer's arguments (`TrainArgs`, `PpoArgs`): every option optional, the shared ones in a
/// flattened [`RunArgs`].
pub trait TrainerArgs: Serialize + DeserializeOwned + Clone + Default {
    /// `prefer dpo`, for messages.
    fn command(&self) -> String;
    fn run(&self) -> &RunArgs;
    fn run_mut(&mut self) -> &mut RunArgs;
    /// Every default of the trainer these options are for (which may depend on an option already
    /// set, such as ppo's `--algo`); [`with_defaults`] merges them under the options.
    fn defaults(&self) -> Self;
    /// The options a resumed run may take from the command line (they are the machine's, not the
    /// run's).
    fn may_change_on_resume(&self) -> &'static [&'static str] {
        &["device", "bucket-mb", "shard"]
    }
    /// Options that are not saved (besides [`RunArgs`]' own), carried from `from` onto options
    /// rebuilt from saved ones.
    fn carry_unsaved(&mut self, _from: &Self) {}
    /// A run.toml written by an older version, brought to today's meaning.
    fn upgrade_saved(saved: Self) -> Result<Self> {
        Ok(saved)
    }
    /// The path options, which run.toml saves as absolute paths.
    fn paths_mut(&mut self) -> Vec<&mut Option<PathBuf>>;

    /// The options over the defaults of their trainer: what a new run saves in run.toml (every value,
    /// so a resumed run keeps them even if a default changes) and what it resolves.
    fn with_defaults(&self) -> Result<Self> {
        over(self, &self.defaults())
    }

    /// Flags over `--config` over a resumed run's run.toml. A resumed run continues with the options
    /// it was started with: a changed option would silently change the run without run.toml
    /// recording it, so it is refused.
    fn with_files(self) -> Result<Self> {
        let args = self;
        let run = args.run();
        if let Some(folder) = run.resume.clone() {
            let given = toml::Table::try_from(&args)?;
            let free = args.may_change_on_resume();
            let changed: Vec<String> = given
                .keys()
                .filter(|k| !free.contains(&k.as_str()))
                .map(|k| format!("--{k}"))
                .collect();
            if !changed.is_empty() || run.config.is_some() {
                bail!(
                    "--resume continues {} with the options saved in its run.toml; drop {} (only --{} may change), or start a new run",
                    folder.display(),
                    if changed.is_empty() { "--config".to_string() } else { changed.join(", ") },
                    free.join(", --")
                );
            }
            let saved: Self = super::run_folder::read_options_toml(&folder.join("run.toml"))
                .map(|(options, _)| options)
                .with_context(|| {
                    format!(
                        "--resume needs the run folder of an earlier {} run",
                        args.command()
                    )
                })?;
            let mut merged = over(&args, &Self::upgrade_saved(saved)?)?;
            merged.run_mut().out = Some(folder);
            return Ok(merged);
        }
        match run.config.clone() {
            Some(file) => {
                let (from_file, _) = super::run_folder::read_options_toml(&file)?;
                over(&args, &from_file)
            }
            None => Ok(args),
        }
    }
}

/// `top` over `bottom`, option by option (as TOML tables of the same struct). What is not saved
/// comes from `top`.
pub fn over<T: TrainerArgs>(top: &T, bottom: &T) -> Result<T> {
    let (mut merged, bottom) = (toml::Table::try_from(top)?, toml::Table::try_from(bottom)?);
    for (k, v) in bottom {
        merged.entry(k).or_insert(v);
    }
    let mut out: T = merged.try_into()?;
    out.run_mut().carry_unsaved(top.run());
    out.carry_unsaved(top);
    Ok(out)
}
