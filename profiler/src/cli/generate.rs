//! `mapscope generate DIR`: man pages (`man/mapscope.1`, one per subcommand) and shell
//! completions (`completions/`), from the clap definition itself, so they never drift from the
//! command line. Hidden: it is for packaging (`cargo xtask dist`), not for users.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Folder to write `man/` and `completions/` into (created if missing).
    pub dir: PathBuf,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let man = args.dir.join("man");
    let completions = args.dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let command = Cli::command();
    write_man_pages(&command, &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "mapscope", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    Ok(())
}

/// `mapscope.1`, then `mapscope-SUBCOMMAND.1` for each visible subcommand.
fn write_man_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let write = |command: clap::Command, name: &str| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .title(name)
            .render(&mut page)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
    };
    write(command.clone(), "mapscope")?;
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = format!("mapscope-{}", sub.get_name());
        write(
            sub.clone().bin_name(format!("mapscope {}", sub.get_name())),
            &name,
        )?;
    }
    Ok(())
}
