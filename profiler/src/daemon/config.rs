//! The daemon's config file: TOML whose keys are the daemon's long flag names (`select`,
//! `listen`, `max-targets`, ...; `[labels]` for `--label`). Every option is also a flag, and a
//! flag given on the command line wins over the file (lists add up).
//!
//! The file is turned into command-line arguments and each one is checked by the same parser
//! as the flags, so a value means the same in both places; what is wrong is reported with the
//! file, the line and the reason. Relative paths of `*-file` keys are relative to the file.
use std::{collections::BTreeMap, path::Path};

use toml::Spanned;

/// One line-numbered problem in a config file.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The arguments a config file stands for, checked one by one with `check` (which parses a
/// list of arguments as the daemon's command line would and returns its first error line).
/// `known` are the flag names the file may use; `given` says whether the command line already
/// sets a flag (then the file's value is left out, except for lists, which add up).
pub fn to_args(
    path: &Path,
    text: &str,
    known: &[(String, FlagKind)],
    given: impl Fn(&str) -> bool,
    check: impl Fn(&[String]) -> Result<(), String>,
) -> Result<Vec<String>, ConfigError> {
    let shown = path.display();
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|error| {
            let line = error.span().map_or(0, |span| line_of(text, span.start));
            let message = error.message().to_owned();
            // The parser names no key (a number too large, say): the line's own key, if any.
            match key_on_line(text, line) {
                Some(key) => ConfigError(format!("{shown}:{line}: {key}: {message}")),
                None => ConfigError(format!("{shown}:{line}: {message}")),
            }
        })?;
    let mut args = Vec::new();
    for (key, value) in &table {
        let line = line_of(text, key.span().start);
        let at =
            |reason: String| ConfigError(format!("{shown}:{line}: {}: {reason}", key.get_ref()));
        let name = key.get_ref().as_str();
        // `[labels]` is the file's form of repeated `--label KEY=VALUE`.
        let (flag, kind) = if name == "labels" {
            ("label".to_owned(), FlagKind::List)
        } else {
            match known.iter().find(|(flag, _)| flag == name) {
                Some((flag, kind)) => (flag.clone(), *kind),
                None => {
                    let hint = if name.contains('_') {
                        format!(" (keys are the flag names: {:?})", name.replace('_', "-"))
                    } else {
                        String::new()
                    };
                    return Err(at(format!("unknown key{hint}")));
                }
            }
        };
        if kind != FlagKind::List && given(&flag) {
            continue;
        }
        // A label's problems are reported at its own line, not at `[labels]`.
        let label_at = |label: &str, reason: String| {
            let line = label_line(text, key.span().end, label).unwrap_or(line);
            ConfigError(format!("{shown}:{line}: labels: {reason}"))
        };
        if let ("labels", toml::Value::Table(labels)) = (name, value.get_ref()) {
            for (label, value) in labels {
                let toml::Value::String(text) = value else {
                    return Err(label_at(
                        label,
                        format!("label {label:?} must be a string, not {value}"),
                    ));
                };
                let arg = vec![format!("--label={label}={text}")];
                check(&arg).map_err(|reason| label_at(label, reason))?;
                args.extend(arg);
            }
            continue;
        }
        let values: Vec<String> = match (name, value.get_ref(), kind) {
            ("labels", _, _) => return Err(at("must be a table of label = \"value\"".into())),
            (_, toml::Value::Boolean(on), FlagKind::Switch) => {
                if *on {
                    args.push(format!("--{flag}"));
                }
                continue;
            }
            (_, _, FlagKind::Switch) => return Err(at("must be true or false".into())),
            (_, toml::Value::Array(items), FlagKind::List) => items
                .iter()
                .map(|item| {
                    scalar(item).ok_or_else(|| {
                        at(format!("list items must be strings or numbers, not {item}"))
                    })
                })
                .collect::<Result<_, _>>()?,
            (_, toml::Value::Array(_), FlagKind::Value) => {
                return Err(at("takes one value, not a list".into()));
            }
            (_, other, _) => {
                vec![scalar(other).ok_or_else(|| at(format!("unsupported value {other}")))?]
            }
        };
        for value in values {
            // A file named in the config is found next to it, as a web config's certificate is
            // found next to the web config.
            let value = if flag.ends_with("-file") && Path::new(&value).is_relative() {
                path.parent()
                    .unwrap_or(Path::new("."))
                    .join(&value)
                    .display()
                    .to_string()
            } else {
                value
            };
            let arg = vec![format!("--{flag}={value}")];
            check(&arg).map_err(at)?;
            args.extend(arg);
        }
    }
    Ok(args)
}

/// The key a `key = value` line sets, if line `line` (1-based) is one.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let (key, _) = text.lines().nth(line.checked_sub(1)?)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_owned())
}

/// The line setting `label` in the table that starts at byte `from` (`[labels]`), if found.
fn label_line(text: &str, from: usize, label: &str) -> Option<usize> {
    let start = line_of(text, from);
    text.lines()
        .enumerate()
        .skip(start)
        .take_while(|(_, line)| !line.trim_start().starts_with('['))
        .find(|(_, line)| {
            line.split_once('=')
                .is_some_and(|(key, _)| key.trim().trim_matches('"') == label)
        })
        .map(|(index, _)| index + 1)
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        _ => None,
    }
}

/// How a flag takes its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    /// `--flag` (true/false in the file).
    Switch,
    /// `--flag VALUE`.
    Value,
    /// `--flag VALUE`, repeatable (a list in the file).
    List,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<(String, FlagKind)> {
        [
            ("listen", FlagKind::Value),
            ("select", FlagKind::List),
            ("label", FlagKind::List),
            ("max-targets", FlagKind::Value),
            ("no-maps", FlagKind::Switch),
            ("web-config-file", FlagKind::Value),
        ]
        .into_iter()
        .map(|(name, kind)| (name.to_owned(), kind))
        .collect()
    }

    fn check(args: &[String]) -> Result<(), String> {
        match args[0].as_str() {
            arg if arg.starts_with("--listen=") && arg.parse::<String>().is_ok() => arg
                ["--listen=".len()..]
                .parse::<std::net::SocketAddr>()
                .map(|_| ())
                .map_err(|error| format!("invalid value: {error}")),
            arg if arg.starts_with("--select=") => arg["--select=".len()..]
                .parse::<crate::daemon::select::Selector>()
                .map(|_| ()),
            _ => Ok(()),
        }
    }

    fn parse(text: &str, given: &[&str]) -> Result<Vec<String>, ConfigError> {
        to_args(
            Path::new("/etc/mapscope.toml"),
            text,
            &known(),
            |flag| given.contains(&flag),
            check,
        )
    }

    #[test]
    fn a_file_becomes_flags() {
        let text = "listen = \"0.0.0.0:9871\"\nselect = [\"go\", \"exe=api\"]\nmax-targets = 16\nno-maps = true\n[labels]\ncluster = \"eu\"\n";
        assert_eq!(
            parse(text, &[]).unwrap(),
            [
                "--label=cluster=eu",
                "--listen=0.0.0.0:9871",
                "--max-targets=16",
                "--no-maps",
                "--select=go",
                "--select=exe=api",
            ]
        );
        // The command line wins for single values; lists add up.
        assert_eq!(
            parse(text, &["listen", "select"]).unwrap(),
            [
                "--label=cluster=eu",
                "--max-targets=16",
                "--no-maps",
                "--select=go",
                "--select=exe=api",
            ]
        );
    }

    #[test]
    fn relative_files_are_next_to_the_config() {
        assert_eq!(
            parse("web-config-file = \"web.yml\"\n", &[]).unwrap(),
            ["--web-config-file=/etc/web.yml"]
        );
        assert_eq!(
            parse("web-config-file = \"/srv/web.yml\"\n", &[]).unwrap(),
            ["--web-config-file=/srv/web.yml"]
        );
    }

    #[test]
    fn every_invalid_file_names_the_line_and_reason() {
        for (text, line, reason) in [
            ("listen = \"x\"\nbogus = 1\n", 2, "bogus: unknown key"),
            (
                "max_targets = 3\n",
                1,
                "(keys are the flag names: \"max-targets\")",
            ),
            (
                "select = [\"go\", \"java\"]\n",
                1,
                "select: \"java\" is not a selector",
            ),
            ("\n\nlisten = \"nowhere\"\n", 3, "listen: invalid value"),
            ("no-maps = \"yes\"\n", 1, "no-maps: must be true or false"),
            ("listen = [\"a\"]\n", 1, "takes one value"),
            // At the label's own line, not the table's.
            ("[labels]\nteam = 3\n", 2, "label \"team\" must be a string"),
            ("select = \"go\"\nlisten = \n", 2, ""),
            ("labels = \"x\"\n", 1, "must be a table"),
        ] {
            let error = parse(text, &[]).unwrap_err().0;
            assert!(
                error.starts_with(&format!("/etc/mapscope.toml:{line}:")) && error.contains(reason),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn errors_point_at_the_line_and_key_at_fault() {
        let labels = "select = [\"go\"]\n[labels]\nteam = \"a\"\n\"bad key\" = 7\n";
        let error = parse(labels, &[]).unwrap_err().0;
        assert!(
            error.starts_with("/etc/mapscope.toml:4: labels: "),
            "{error}"
        );
        let huge = "select = [\"go\"]\nmax-targets = 99999999999999999999\n";
        let error = parse(huge, &[]).unwrap_err().0;
        assert!(
            error.starts_with("/etc/mapscope.toml:2: max-targets: "),
            "{error}"
        );
        assert_eq!(key_on_line("[labels]\n", 1), None);
        assert_eq!(key_on_line("a = 1\n", 3), None);
    }
}
