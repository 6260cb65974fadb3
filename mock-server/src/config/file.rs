//! The server's config file (`--config FILE`, TOML): every key is a long option without
//! its `--` (`max-jobs = 16`, `tls-dir = "/etc/lrpymrpc/tls"`, `action-cache = true`,
//! `allow-cn = ["alice", "bob"]`), turned into command-line arguments placed before the
//! real ones, and only for options the command line does not set: the command line
//! wins. A key that is no option, a section, or a value of the wrong kind is refused with
//! the file and the key named.

use std::collections::HashSet;
use std::path::Path;

use clap::CommandFactory;

use crate::SERVER_NAME;

/// The arguments `text` (the contents of `path`) stands for, leaving out the options in
/// `set_on_command_line` (by long name).
pub fn arguments<C: CommandFactory>(
    path: &Path,
    text: &str,
    set_on_command_line: &HashSet<String>,
) -> Result<Vec<String>, String> {
    let file = path.display();
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| format!("config file `{file}`: {}", e.message()))?;
    let command = C::command();
    let options: HashSet<String> =
        command.get_arguments().filter_map(|arg| arg.get_long().map(str::to_string)).collect();
    let mut arguments = Vec::new();
    for (key, value) in table {
        if key == "config" || !options.contains(&key) {
            let hint = match lrpymrpc_units::closest(&key, options.iter().map(String::as_str)) {
                Some(meant) => format!("did you mean `{meant}`?"),
                None => format!("keys are the long options without `--` (`{SERVER_NAME} --help`), at the top level"),
            };
            return Err(format!("config file `{file}`: `{key}` is not an option of {SERVER_NAME}\nhint: {hint}"));
        }
        if set_on_command_line.contains(&key) {
            continue;
        }
        let flag = format!("--{key}");
        let scalar = |value: &toml::Value| -> Result<String, String> {
            match value {
                toml::Value::String(text) => Ok(text.clone()),
                toml::Value::Integer(number) => Ok(number.to_string()),
                toml::Value::Float(number) => Ok(number.to_string()),
                other => Err(format!(
                    "config file `{file}`: `{key}` takes a string or a number here, not {}",
                    other.type_str()
                )),
            }
        };
        match &value {
            toml::Value::Boolean(true) => arguments.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    arguments.push(flag.clone());
                    arguments.push(scalar(item)?);
                }
            }
            toml::Value::Table(_) => {
                return Err(format!("config file `{file}`: `{key}` is a section; every key goes at the top level"));
            }
            other => {
                arguments.push(flag);
                arguments.push(scalar(other)?);
            }
        }
    }
    Ok(arguments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Demo {
        #[arg(long)]
        max_jobs: Option<u32>,
        #[arg(long)]
        action_cache: bool,
        #[arg(long)]
        allow_cn: Vec<String>,
        #[arg(long)]
        tls_dir: Option<String>,
    }

    #[test]
    fn keys_become_options_and_the_command_line_wins() {
        let path = Path::new("server.toml");
        let text = "max-jobs = 8\naction-cache = true\nallow-cn = [\"alice\", \"bob\"]\ntls-dir = \"/etc/tls\"\n";
        let mut args = arguments::<Demo>(path, text, &HashSet::new()).unwrap();
        args.sort();
        for expected in ["--max-jobs", "8", "--action-cache", "--allow-cn", "alice", "bob", "--tls-dir", "/etc/tls"] {
            assert!(args.contains(&expected.to_string()), "{args:?}");
        }
        let set: HashSet<String> = ["max-jobs".to_string()].into();
        assert!(!arguments::<Demo>(path, text, &set).unwrap().contains(&"8".to_string()));
    }

    #[test]
    fn unknown_keys_sections_and_wrong_kinds_are_refused_by_name() {
        let path = Path::new("server.toml");
        let error = arguments::<Demo>(path, "max-job = 8\n", &HashSet::new()).unwrap_err();
        assert!(error.contains("`server.toml`") && error.contains("`max-job` is not an option"), "{error}");
        assert!(error.contains("hint: did you mean `max-jobs`?"), "{error}");
        let error = arguments::<Demo>(path, "[limits]\nmax-jobs = 8\n", &HashSet::new()).unwrap_err();
        assert!(error.contains("`limits` is not an option") || error.contains("section"), "{error}");
        let error = arguments::<Demo>(path, "tls-dir = { a = 1 }\n", &HashSet::new()).unwrap_err();
        assert!(error.contains("`tls-dir` is a section"), "{error}");
        let error = arguments::<Demo>(path, "max-jobs = = 8\n", &HashSet::new()).unwrap_err();
        assert!(error.starts_with("config file `server.toml`:"), "{error}");
    }
}
