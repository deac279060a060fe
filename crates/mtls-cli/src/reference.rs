//! The command-line reference, generated from the clap definitions ([`crate::command`]):
//! `docs/cli.md` (checked to be current by the test suite), man pages and shell completions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

/// Shells `mtls completions` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Elvish,
    Powershell,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
            Shell::Elvish => clap_complete::Shell::Elvish,
            Shell::Powershell => clap_complete::Shell::PowerShell,
        }
    }
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell.
    shell: Shell,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Write the Markdown reference here (docs/cli.md).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write one man page per command into this directory (mtls.1, mtls-ca-init.1, …).
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
    /// Write completions for every shell into this directory.
    #[arg(long, value_name = "DIR")]
    completions: Option<PathBuf>,
}

/// `mtls completions SHELL`: the completion script on stdout.
pub fn completions(a: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = crate::command();
    clap_complete::generate(
        a.shell.generator(),
        &mut cmd,
        "mtls",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}

/// `mtls generate-reference`: the Markdown reference, man pages and completions.
pub fn generate(a: GenerateArgs) -> Result<ExitCode> {
    if let Some(p) = &a.markdown {
        std::fs::write(p, markdown()).with_context(|| p.display().to_string())?;
    }
    if let Some(dir) = &a.man {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        clap_mangen::generate_to(crate::command(), dir)
            .with_context(|| format!("writing man pages to {}", dir.display()))?;
    }
    if let Some(dir) = &a.completions {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        for shell in Shell::value_variants() {
            clap_complete::generate_to(shell.generator(), &mut crate::command(), "mtls", dir)
                .with_context(|| format!("writing completions to {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole reference in Markdown: every visible command's full help, in order.
pub fn markdown() -> String {
    // The same text on every machine: no values from this environment.
    fn no_env_values(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        let mut cmd = cmd.mut_args(|a| a.hide_env_values(true));
        for n in names {
            cmd = cmd.mut_subcommand(n, no_env_values);
        }
        cmd
    }
    let mut cmd = no_env_values(crate::command());
    cmd.build();
    let mut out = String::from(
        "# `mtls` command-line reference\n\n\
         Generated from the command definitions by `mtls generate-reference --markdown docs/cli.md`;\n\
         the test suite fails when this file is not current. Exit codes: 0 success, 1 the\n\
         operation failed, 2 the input is at fault (see the README).\n",
    );
    section(&mut cmd, &mut out, Path::new("mtls"));
    out
}

fn section(cmd: &mut clap::Command, out: &mut String, path: &Path) {
    let name = path.display().to_string().replace('/', " ");
    let level = "#".repeat((path.components().count() + 1).min(4));
    out.push_str(&format!("\n{level} {name}\n\n```text\n"));
    let help = cmd.render_long_help().to_string();
    for line in help.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("```\n");
    for sub in cmd.get_subcommands_mut() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let p = path.join(sub.get_name());
        section(sub, out, &p);
    }
}
