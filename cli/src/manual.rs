//! `fairlock man [COMMAND]`: the man page, generated from the command line's definition.

use std::io::Write;

use clap::CommandFactory;

use crate::{exit, Cli};

/// What every page adds to clap_mangen's sections: exit status and environment.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "FAIRLOCK_BACKEND, FAIRLOCK_TTL, FAIRLOCK_TIMEOUT, FAIRLOCK_GRACE, \
         FAIRLOCK_LOCK_DELAY, FAIRLOCK_CONFLICT_EXIT_CODE",
        "Defaults for --backend, --ttl, --timeout, --grace, --lock-delay and \
         --conflict-exit-code; a command-line option wins.",
    ),
    (
        "FAIRLOCK_USER, FAIRLOCK_PASSWORD, FAIRLOCK_PASSWORD_FILE",
        "Credentials the backend URL does not give: the user, and its password or a file \
         whose first line is the password (the URL's password or password_file wins).",
    ),
    (
        "RUST_LOG",
        "If set, decides which diagnostics go to stderr instead of -v (tracing's \
         EnvFilter syntax, e.g. fairlock=debug).",
    ),
    (
        "FAIRLOCK_NAME, FAIRLOCK_TOKEN, FAIRLOCK_KEY, FAIRLOCK_SEQUENCER",
        "Set for COMMAND by lock and elect: the name, the fencing token (decimal), the \
         backend key and the sequencer (fl1:…, for check and for services that fence their \
         writes) of what is held.",
    ),
    (
        "FAIRLOCK_SEQUENCER",
        "Also the default SEQUENCER of check: inside COMMAND, fairlock check checks its own \
         holder.",
    ),
];

/// Prints the page of fairlock (`command` `None`) or of one of its commands, e.g.
/// fairlock-lock(1); returns the exit code.
pub fn print(command: Option<&str>) -> u8 {
    let mut cli = Cli::command().disable_help_subcommand(true);
    // Propagates the global options and names subcommands `fairlock-NAME`.
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => match cli.find_subcommand(name).filter(|sub| !sub.is_hide_set()) {
            Some(sub) => sub.clone(),
            None => {
                eprintln!("fairlock: no command {name:?} (see fairlock --help)");
                return exit::USAGE;
            }
        },
    };
    let mut out = Vec::new();
    if let Err(e) = render(page, &mut out) {
        eprintln!("fairlock: cannot render the man page: {e}");
        return exit::SOFTWARE;
    }
    // A closed stdout (e.g. `| head`) is not an error worth reporting.
    let _ = std::io::stdout().write_all(&out);
    0
}

/// clap_mangen's page with EXIT STATUS and ENVIRONMENT sections as tagged paragraphs
/// (clap's after-help text would be filled into one paragraph).
fn render(page: clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(page.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if page.get_arguments().any(|arg| !arg.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if page.get_subcommands().any(|sub| !sub.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    tagged_section(out, "EXIT STATUS", exit::TABLE)?;
    tagged_section(out, "ENVIRONMENT", ENVIRONMENT)?;
    if page.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

fn tagged_section(out: &mut Vec<u8>, title: &str, items: &[(&str, &str)]) -> std::io::Result<()> {
    writeln!(out, ".SH \"{title}\"")?;
    for (tag, text) in items {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff_text(tag), roff_text(text))?;
    }
    Ok(())
}

/// `text` safe as a roff text line: backslashes and hyphens escaped, no leading control
/// character.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
