//! `sekisho ui`: the edge alone (the web UI and the one public entry point), and
//! `sekisho ui hash-password` for the configuration's `users`.

use std::io::BufRead;
use std::path::PathBuf;

use sekisho_edge::EdgeConfig;

#[derive(clap::Args)]
pub struct UiArgs {
    /// YAML or TOML configuration file (listen, gateway, chainstore, users, tokens).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Check the configuration (file and environment) and exit: 0 when it is usable.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<UiCommand>,
}

#[derive(clap::Subcommand)]
enum UiCommand {
    /// Reads a password on stdin and prints its argon2id hash for `users[].password_hash`.
    HashPassword,
}

pub async fn run(args: UiArgs) -> anyhow::Result<()> {
    if let Some(UiCommand::HashPassword) = args.command {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']);
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        println!(
            "{}",
            sekisho_edge::auth::hash_password(password).map_err(anyhow::Error::msg)?
        );
        return Ok(());
    }
    let cfg = EdgeConfig::load(args.config.as_deref())?;
    if args.check {
        println!("ui configuration ok");
        return Ok(());
    }
    if cfg.users.is_empty() && cfg.tokens.is_empty() {
        eprintln!(
            "WARNING: no users and no tokens are configured: every /api/ call will be refused"
        );
    }
    let running = sekisho_edge::start(cfg, crate::shutdown_signal()).await?;
    println!("sekisho ui listening on http://{}", running.addr);
    running.wait().await?;
    Ok(())
}
