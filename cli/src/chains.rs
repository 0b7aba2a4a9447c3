//! `sekisho chains`: edit chains in a chainstore from the command line, in the manner of
//! kubectl. `apply` creates or updates from a file with the version it just read, so a
//! concurrent edit is refused (ABORTED), never overwritten.

use std::path::PathBuf;

use anyhow::{Context, bail};
use sekisho_proto::chainstore::v1::{self as proto, chain_store_client::ChainStoreClient};
use tonic::Code;
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct ChainsArgs {
    /// The chainstore to talk to.
    #[arg(
        long,
        env = "SEKISHO_CHAINSTORE",
        default_value = "http://127.0.0.1:7070"
    )]
    chainstore: String,
    /// Recorded with each change.
    #[arg(long, env = "USER", default_value = "sekisho")]
    author: String,
    #[command(subcommand)]
    command: ChainsCommand,
}

#[derive(clap::Subcommand)]
enum ChainsCommand {
    /// Creates the chain in the file, or updates it if it exists.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
    },
    /// Prints a chain's document (the current version unless one is named).
    Get {
        name: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Lists the chains with their versions.
    List,
    /// Lists every version of a chain.
    History { name: String },
    /// Shows what `apply -f FILE` would change, or the change between two versions.
    Diff {
        /// Compare this file with the chain it names.
        #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "from", "to"])]
        file: Option<PathBuf>,
        name: Option<String>,
        from: Option<u64>,
        to: Option<u64>,
    },
    /// Makes a new version with an earlier version's document.
    Rollback {
        name: String,
        #[arg(long)]
        to: u64,
    },
    /// Deletes a chain (its history is kept).
    Delete { name: String },
}

pub async fn run(args: ChainsArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.chainstore.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the chainstore at {}", args.chainstore))?;
    let mut c = ChainStoreClient::new(channel);
    let result = command(&mut c, &args.author, args.command).await;
    result.map_err(|e| match e.downcast::<tonic::Status>() {
        Ok(s) => anyhow::anyhow!("{}", s.message()),
        Err(e) => e,
    })
}

async fn current(
    c: &mut ChainStoreClient<Channel>,
    name: &str,
) -> anyhow::Result<Option<proto::Chain>> {
    match c
        .get_chain(proto::GetChainRequest {
            name: name.to_owned(),
            version: 0,
        })
        .await
    {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

fn read(file: &PathBuf) -> anyhow::Result<(String, String)> {
    let document =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let spec =
        sekisho_chainstore::parse_chain(&document).map_err(|e| match (e.line, e.column) {
            (Some(l), Some(col)) => anyhow::anyhow!("{}:{l}:{col}: {}", file.display(), e.message),
            _ => anyhow::anyhow!("{}: {}", file.display(), e.message),
        })?;
    Ok((spec.name, document))
}

async fn command(
    c: &mut ChainStoreClient<Channel>,
    author: &str,
    cmd: ChainsCommand,
) -> anyhow::Result<()> {
    match cmd {
        ChainsCommand::Apply { file, comment } => {
            let (name, document) = read(&file)?;
            match current(c, &name).await? {
                None => {
                    let v = c
                        .create_chain(proto::CreateChainRequest {
                            document,
                            author: author.to_owned(),
                            comment,
                        })
                        .await?
                        .into_inner();
                    println!("chain {name} created (version {})", v.version);
                }
                Some(cur) if cur.document == document => {
                    println!("chain {name} unchanged (version {})", cur.version)
                }
                Some(cur) => {
                    let v = c
                        .update_chain(proto::UpdateChainRequest {
                            name: name.clone(),
                            document,
                            expected_version: cur.version,
                            author: author.to_owned(),
                            comment,
                        })
                        .await?
                        .into_inner();
                    println!("chain {name} configured (version {})", v.version);
                }
            }
        }
        ChainsCommand::Get { name, version } => {
            let r = c
                .get_chain(proto::GetChainRequest {
                    name,
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            print!("{}", r.document);
        }
        ChainsCommand::List => {
            let list = c
                .list_chains(proto::ListChainsRequest {})
                .await?
                .into_inner();
            println!("{:<32} {:>7}  {:<20} AUTHOR", "NAME", "VERSION", "UPDATED");
            for ch in list.chains {
                println!(
                    "{:<32} {:>7}  {:<20} {}",
                    ch.name,
                    ch.version,
                    when(ch.updated_at),
                    ch.author
                );
            }
        }
        ChainsCommand::History { name } => {
            let list = c
                .list_versions(proto::ListVersionsRequest { name })
                .await?
                .into_inner();
            println!(
                "{:>7}  {:<20} {:<16} COMMENT",
                "VERSION", "UPDATED", "AUTHOR"
            );
            for v in list.versions {
                let comment = if v.deleted {
                    format!("(deleted) {}", v.comment)
                } else {
                    v.comment
                };
                println!(
                    "{:>7}  {:<20} {:<16} {comment}",
                    v.version,
                    when(v.updated_at),
                    v.author
                );
            }
        }
        ChainsCommand::Diff {
            file,
            name,
            from,
            to,
        } => {
            let (label_a, a, label_b, b) = match (file, name, from, to) {
                (Some(file), None, None, None) => {
                    let (name, document) = read(&file)?;
                    let cur = current(c, &name).await?;
                    let (label, old) = match cur {
                        Some(cur) => (format!("{name} version {}", cur.version), cur.document),
                        None => (format!("{name} (does not exist)"), String::new()),
                    };
                    (label, old, file.display().to_string(), document)
                }
                (None, Some(name), Some(from), Some(to)) => {
                    let get = |version| proto::GetChainRequest {
                        name: name.clone(),
                        version,
                    };
                    let a = c.get_chain(get(from)).await?.into_inner().document;
                    let b = c.get_chain(get(to)).await?.into_inner().document;
                    (
                        format!("{name} version {from}"),
                        a,
                        format!("{name} version {to}"),
                        b,
                    )
                }
                _ => bail!("give -f FILE, or NAME FROM TO"),
            };
            let diff = similar::TextDiff::from_lines(&a, &b);
            print!(
                "{}",
                diff.unified_diff()
                    .context_radius(3)
                    .header(&label_a, &label_b)
            );
        }
        ChainsCommand::Rollback { name, to } => {
            let cur = current(c, &name)
                .await?
                .with_context(|| format!("chain `{name}` does not exist"))?;
            let v = c
                .rollback(proto::RollbackRequest {
                    name: name.clone(),
                    to_version: to,
                    expected_version: cur.version,
                    author: author.to_owned(),
                })
                .await?
                .into_inner();
            println!(
                "chain {name} rolled back to version {to}'s document (now version {})",
                v.version
            );
        }
        ChainsCommand::Delete { name } => {
            let cur = current(c, &name)
                .await?
                .with_context(|| format!("chain `{name}` does not exist"))?;
            c.delete_chain(proto::DeleteChainRequest {
                name: name.clone(),
                expected_version: cur.version,
            })
            .await?;
            println!("chain {name} deleted (history kept)");
        }
    }
    Ok(())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
fn when(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_read_as_utc_dates() {
        assert_eq!(super::when(0), "1970-01-01 00:00:00");
        assert_eq!(super::when(1_795_392_000), "2026-11-23 00:00:00");
        assert_eq!(super::when(951_782_400 + 3_661), "2000-02-29 01:01:01");
    }
}
