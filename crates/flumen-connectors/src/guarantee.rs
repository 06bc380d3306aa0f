//! `sink.delivery-guarantee`: what a message sink promises about each row
//! with checkpoints on, named as Flink's connectors name it.

use flumen_types::Result;

use crate::Options;
use crate::options::OptionSpec;

/// The option of message sinks that can promise more than one level.
pub(crate) const OPTION: OptionSpec = OptionSpec::optional(
    "sink.delivery-guarantee",
    "sink: exactly-once (rows handed over when their checkpoint completes), at-least-once (default) or none",
);

/// What a message sink promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guarantee {
    /// Each row once, also across failures.
    ExactlyOnce,
    /// Flushed and confirmed at every barrier; a replay may write again.
    AtLeastOnce,
    /// Never waited for.
    None,
}

impl Guarantee {
    /// The table's choice; at-least-once by default, as in Flink.
    pub(crate) fn parse(options: &Options) -> Result<Self> {
        Ok(
            match options.choice(
                "sink.delivery-guarantee",
                &["exactly-once", "at-least-once", "none"],
                "at-least-once",
            )? {
                "exactly-once" => Guarantee::ExactlyOnce,
                "none" => Guarantee::None,
                _ => Guarantee::AtLeastOnce,
            },
        )
    }

    /// The option's value for this choice.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::None => "none",
        }
    }
}
