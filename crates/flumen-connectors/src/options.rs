//! Connector options from `WITH (key = 'value', …)`, checked against what
//! each connector accepts so that a typo is an error that lists the valid keys.

use std::collections::BTreeMap;
use std::str::FromStr;

use flumen_types::{FlumenError, Result};

/// One option a connector accepts.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// The key.
    pub name: &'static str,
    /// Whether the connector needs it.
    pub required: bool,
    /// What it means, for error messages and docs.
    pub help: &'static str,
}

impl OptionSpec {
    pub(crate) const fn required(name: &'static str, help: &'static str) -> Self {
        OptionSpec {
            name,
            required: true,
            help,
        }
    }
    pub(crate) const fn optional(name: &'static str, help: &'static str) -> Self {
        OptionSpec {
            name,
            required: false,
            help,
        }
    }
}

/// The options of one table, keyed by lower-case name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<String, String>,
}

/// Whether the value of option `key` is a secret, never to be printed.
fn is_secret(key: &str) -> bool {
    ["secret", "password", "token", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| {
                let shown = if is_secret(k) { "***" } else { v.as_str() };
                (k, shown)
            }))
            .finish()
    }
}

impl Options {
    /// Options from key/value pairs; keys are case-insensitive.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            let key = k.to_ascii_lowercase();
            if values.insert(key.clone(), v).is_some() {
                return Err(FlumenError::config(format!(
                    "option '{key}' is given twice"
                )));
            }
        }
        Ok(Options { values })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key`, or an error naming it.
    pub fn required(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| FlumenError::config(format!("missing required option '{key}'")))
    }

    /// The items of the `;`-separated list `key` (`a;b`), trimmed, empty
    /// ones left out; none when `key` is not given.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .unwrap_or_default()
            .split(';')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The items of the list `key`, which must name at least one.
    pub fn required_list(&self, key: &str) -> Result<Vec<String>> {
        self.required(key)?;
        let items = self.list(key);
        if items.is_empty() {
            return Err(FlumenError::config(format!("option '{key}' names nothing")));
        }
        Ok(items)
    }

    /// The value of `key` parsed as `T`, or an error naming the key and
    /// value and saying what the value must be.
    pub fn parse<T: OptionValue>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .map(|v| {
                v.trim().parse::<T>().map_err(|_| {
                    FlumenError::config(format!("option {key} = '{v}' is not {}", T::WHAT))
                })
            })
            .transpose()
    }

    /// The value of `key` as a duration (`200ms`, `10 s`, `5 min`), or an
    /// error naming the key and value.
    pub fn duration(&self, key: &str) -> Result<Option<std::time::Duration>> {
        self.get(key)
            .map(|v| {
                flumen_types::duration_nanos(v)
                    .filter(|ns| *ns >= 0)
                    .map(|ns| std::time::Duration::from_nanos(ns as u64))
                    .ok_or_else(|| {
                        FlumenError::config(format!(
                            "option {key} = '{v}' is not a duration such as '200ms' or '10 s'"
                        ))
                    })
            })
            .transpose()
    }

    /// The options whose keys start with `prefix`, with it removed
    /// (`properties.` options passed through to a client library).
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.values
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// The value of `key`, which must be one of `choices`; `default` when absent.
    pub fn choice<'a>(
        &'a self,
        key: &str,
        choices: &[&'a str],
        default: &'a str,
    ) -> Result<&'a str> {
        let value = self.get(key).unwrap_or(default);
        if choices.contains(&value) {
            Ok(value)
        } else {
            Err(FlumenError::config(format!(
                "option {key} = '{value}' is not one of: {}",
                choices.join(", ")
            )))
        }
    }

    /// Checks every key against `specs` (plus `connector`) and that every
    /// required key is present. A spec named `prefix.*` takes every key
    /// that starts with `prefix.`.
    pub fn check(&self, connector: &str, specs: &[OptionSpec]) -> Result<()> {
        let known = |key: &str| {
            specs.iter().any(|s| match s.name.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix) && key.len() > prefix.len(),
                None => s.name == key,
            })
        };
        for key in self.values.keys() {
            if key != "connector" && !known(key) {
                let valid: Vec<String> = specs
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.help))
                    .collect();
                return Err(FlumenError::config(format!(
                    "unknown option '{key}' for connector '{connector}'; valid options: {}",
                    valid.join(", ")
                )));
            }
        }
        for spec in specs.iter().filter(|s| s.required) {
            if self.get(spec.name).is_none() {
                return Err(FlumenError::config(format!(
                    "connector '{connector}' needs option '{}' ({})",
                    spec.name, spec.help
                )));
            }
        }
        Ok(())
    }
}

/// The option every source connector takes: how long after a window closes
/// its late rows still update it (the corrections are an updating result).
pub(crate) const ALLOWED_LATENESS: OptionSpec = OptionSpec::optional(
    "allowed_lateness",
    "with WATERMARK FOR: how long a window takes late rows after it fired, emitting corrections (default 0)",
);

/// How long a source holds a partial batch for more rows: the option of
/// sources whose rows arrive over time.
pub(crate) const LINGER: OptionSpec = OptionSpec::optional(
    "linger",
    "how long a partial batch waits for more rows before it is sent (default '1 ms'); a full batch goes at once",
);

/// [`LINGER`]'s default: a row waits at most this long for others.
pub(crate) const DEFAULT_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// The option every source connector takes: how long a source subtask may
/// go without rows before it stops holding back the watermark.
pub(crate) const IDLE_TIMEOUT: OptionSpec = OptionSpec::optional(
    "idle_timeout",
    "with WATERMARK FOR: a subtask without rows this long (default '10 s') stops holding back the watermark",
);

/// A type an option's value is parsed as, with what such a value must be
/// in a user's words (an error says "is not a whole number", not "u64").
pub trait OptionValue: FromStr {
    /// What a value must be, after "is not".
    const WHAT: &'static str;
}

macro_rules! option_values {
    ($($t:ty => $what:literal),* $(,)?) => {
        $(impl OptionValue for $t {
            const WHAT: &'static str = $what;
        })*
    };
}

option_values! {
    u64 => "a whole number of 0 or more",
    usize => "a whole number of 0 or more",
    u32 => "a whole number from 0 to 4294967295",
    u16 => "a whole number from 0 to 65535",
    i64 => "a whole number",
    bool => "true or false",
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Options {
        Options::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    const SPECS: &[OptionSpec] = &[
        OptionSpec::required("path", "where"),
        OptionSpec::optional("format", "how"),
    ];

    #[test]
    fn unknown_option_lists_valid_ones() {
        let err = opts(&[("path", "/x"), ("fromat", "csv")])
            .check("filesystem", SPECS)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown option 'fromat'"), "{msg}");
        assert!(msg.contains("path") && msg.contains("format"), "{msg}");
    }

    #[test]
    fn missing_required_option_is_named() {
        let err = opts(&[("format", "csv")])
            .check("filesystem", SPECS)
            .unwrap_err();
        assert!(err.to_string().contains("needs option 'path'"), "{err}");
    }

    #[test]
    fn bad_number_names_key_and_value() {
        let err = opts(&[("events", "ten")])
            .parse::<u64>("events")
            .unwrap_err();
        assert!(err.to_string().contains("events = 'ten'"), "{err}");
        let errors = [
            opts(&[("n", "-5")]).parse::<u64>("n").map(|_| ()),
            opts(&[("n", "70000")]).parse::<u16>("n").map(|_| ()),
            opts(&[("n", "yes")]).parse::<bool>("n").map(|_| ()),
            opts(&[("n", "1.5")]).parse::<i64>("n").map(|_| ()),
        ];
        let said = [
            "is not a whole number of 0 or more",
            "is not a whole number from 0 to 65535",
            "is not true or false",
            "is not a whole number",
        ];
        for (parsed, want) in errors.into_iter().zip(said) {
            let err = parsed.unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let o = opts(&[
            ("s3.secret-key", "hunter2"),
            ("auth.password", "pw1"),
            ("auth.token", "tk1"),
            ("path", "s3://b/x"),
        ]);
        let shown = format!("{o:?}");
        assert!(shown.contains("s3://b/x"), "{shown}");
        for secret in ["hunter2", "pw1", "tk1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn lists_split_on_semicolons_and_a_required_one_names_something() {
        let o = opts(&[("topic", " a ; b;;"), ("empty", " ; ")]);
        assert_eq!(o.list("topic"), ["a", "b"]);
        assert!(o.list("missing").is_empty());
        assert_eq!(o.required_list("topic").unwrap(), ["a", "b"]);
        let err = o.required_list("empty").unwrap_err().to_string();
        assert!(err.contains("'empty' names nothing"), "{err}");
        let err = o.required_list("missing").unwrap_err().to_string();
        assert!(err.contains("missing required option 'missing'"), "{err}");
    }
}
