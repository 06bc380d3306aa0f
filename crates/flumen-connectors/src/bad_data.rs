//! What a source does with a record it cannot decode (`bad_data`): fail
//! the job naming the record, drop and count it, or append it with its
//! error and position to a dead-letter file and count it.

use std::path::PathBuf;

use flumen_runtime::JobMetrics;
use flumen_types::{FlumenError, Result};

use crate::Options;
use crate::options::OptionSpec;

/// The options every source that decodes records takes.
pub(crate) const OPTIONS: [OptionSpec; 2] = [
    OptionSpec::optional(
        "bad_data",
        "fail (default), drop or dead_letter: what a malformed record does",
    ),
    OptionSpec::optional(
        "dead_letter.path",
        "with bad_data = 'dead_letter': a local directory that receives each malformed record, with its error and position, as a JSON line",
    ),
];

/// What a malformed record does.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum BadData {
    /// The job fails, naming the record.
    Fail,
    /// It is dropped and counted.
    Drop,
    /// It is written, with its error and position, to a dead-letter
    /// output, and counted.
    DeadLetter(DeadLetters),
}

/// Where dead letters go.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum DeadLetters {
    /// A file per subtask under this local directory.
    Dir(PathBuf),
    /// A Kafka topic (Kafka sources: `dead_letter.topic`), written by the
    /// source itself.
    Topic(String),
    /// A NATS subject a JetStream stream captures (NATS sources:
    /// `dead_letter.subject`), published to by the source itself.
    Subject(String),
}

impl BadData {
    /// The table's choice; a dead-letter directory is created when missing.
    pub(crate) fn parse(options: &Options) -> Result<Self> {
        Ok(
            match options.choice("bad_data", &["fail", "drop", "dead_letter"], "fail")? {
                "drop" => BadData::Drop,
                "dead_letter" => {
                    if let Some(topic) = options.get("dead_letter.topic") {
                        return Ok(BadData::DeadLetter(DeadLetters::Topic(topic.to_string())));
                    }
                    if let Some(subject) = options.get("dead_letter.subject") {
                        return Ok(BadData::DeadLetter(DeadLetters::Subject(
                            subject.to_string(),
                        )));
                    }
                    let dir = options.get("dead_letter.path").ok_or_else(|| {
                        FlumenError::config(
                            "bad_data = 'dead_letter' needs option 'dead_letter.path' (a local directory; Kafka sources: or 'dead_letter.topic'; NATS sources: or 'dead_letter.subject')",
                        )
                    })?;
                    let dir = std::path::absolute(dir).map_err(|e| {
                        FlumenError::config(format!("option 'dead_letter.path' ('{dir}'): {e}"))
                    })?;
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        FlumenError::io(format!(
                            "cannot create the dead-letter directory '{}': {e}",
                            dir.display()
                        ))
                    })?;
                    BadData::DeadLetter(DeadLetters::Dir(dir))
                }
                _ => BadData::Fail,
            },
        )
    }

    /// Appends dead-letter `records` (JSON lines) to subtask `subtask`'s
    /// file and counts them. Appended as they are found, so a restart may
    /// write a record again (at least once).
    pub(crate) fn send_to_dead_letter(
        &self,
        subtask: usize,
        records: &[String],
        metrics: &JobMetrics,
    ) -> Result<()> {
        let dir = match self {
            BadData::DeadLetter(DeadLetters::Dir(dir)) => dir,
            BadData::DeadLetter(DeadLetters::Topic(to) | DeadLetters::Subject(to)) => {
                return Err(FlumenError::internal(format!(
                    "dead letters for '{to}' reached the file writer"
                )));
            }
            _ => return Ok(()),
        };
        if records.is_empty() {
            return Ok(());
        }
        let file = dir.join(format!("dead-letter-{subtask}.jsonl"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)?;
            let mut text = records.join("\n");
            text.push('\n');
            out.write_all(text.as_bytes())
        };
        write().map_err(|e| {
            FlumenError::transient(format!("writing dead letters to {}", file.display()), e)
        })?;
        metrics.add_bad_records_dead_lettered(records.len());
        Ok(())
    }
}

/// One dead-letter record: where the malformed record was (`position`, a
/// JSON object), why it failed, and its bytes (as text when they are UTF-8,
/// else as hex).
pub(crate) fn dead_letter_record(
    mut position: serde_json::Value,
    error: &str,
    raw: &[u8],
) -> String {
    position["error"] = error.into();
    match std::str::from_utf8(raw) {
        Ok(text) => position["raw"] = text.trim_end_matches('\r').into(),
        Err(_) => {
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            position["raw_hex"] = hex.into();
        }
    }
    position.to_string()
}
