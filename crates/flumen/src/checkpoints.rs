//! `flumen checkpoints DIR`: what a checkpoint directory holds.

use anyhow::Result;
use clap::Args;
use flumen_state::checkpoint::{CheckpointKind, CheckpointStore};

/// Options of `flumen checkpoints`.
#[derive(Args)]
pub(crate) struct ListArgs {
    /// The checkpoint directory (a local path or an object-store URL).
    dir: String,
}

/// Prints one line per checkpoint and savepoint, oldest first.
pub(crate) async fn list(args: &ListArgs) -> Result<()> {
    let store = CheckpointStore::open(&args.dir)?;
    let listed = store.list().await?;
    if listed.is_empty() {
        println!("no checkpoints in {}", store.display());
        return Ok(());
    }
    println!(
        "{:>8}  {:<23}  {:<10}  {:>12}  {:>11}  status",
        "id", "time (UTC)", "kind", "bytes", "parallelism"
    );
    for l in listed {
        let kind = match l.kind {
            CheckpointKind::Checkpoint => "checkpoint",
            CheckpointKind::Savepoint => "savepoint",
        };
        let (time, parallelism, status) = match &l.manifest {
            Some(m) => (
                arrow::temporal_conversions::timestamp_ms_to_datetime(m.time_ms as i64)
                    .map_or(String::new(), |t| {
                        t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
                    }),
                m.parallelism.to_string(),
                if m.finished {
                    "complete (job finished)"
                } else {
                    "complete"
                },
            ),
            None => (String::new(), String::new(), "incomplete"),
        };
        println!(
            "{:>8}  {:<23}  {:<10}  {:>12}  {:>11}  {status}",
            l.id, time, kind, l.bytes, parallelism
        );
    }
    Ok(())
}
