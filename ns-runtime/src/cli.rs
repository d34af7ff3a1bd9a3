//! The command line of a server binary, with a configuration file under it.
//!
//! `--config FILE` (or `NS_CONFIG`) names a TOML file whose keys are the long option names
//! (`ws-listen`; `ws_listen` is read too). Each value the file gives is installed as its
//! option's default before clap parses, so clap's own order decides: a flag, then its `NS_*`
//! variable, then the file, then the built-in default. `--print-config` prints the effective
//! settings as such a file, secrets redacted.
//!
//! Nothing here knows an option by name but `--secret`: an option added to a binary later is
//! a key of its file, checked and printed like the others. A key's TOML type follows the
//! option's value parser (integers for integer options, `true`/`false` for flags, arrays for
//! lists, strings for the rest); its format is checked by that same parser.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, ColorChoice, Command, Id, Parser};

use crate::config::Problems;

/// The option naming the configuration file.
pub const CONFIG: &str = "config";
/// The variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "NS_CONFIG";
/// The flag that prints the effective settings and exits.
pub const PRINT_CONFIG: &str = "print-config";

/// What `--print-config` shows in place of a secret (and of a password inside a URL).
pub const REDACTED: &str = "<redacted>";

/// Parses the command line of `T` over its configuration file, exiting as clap does (2) on
/// a bad command line. The file's problems come back, with what `--print-config` asked, for
/// the binary to add its own checks and call [`Problems::exit_if_any`].
pub fn parse<T: Parser>() -> (T, Problems) {
    let loaded = load(
        T::command(),
        std::env::args_os().collect(),
        std::env::var_os(CONFIG_ENV),
    )
    .unwrap_or_else(|e| e.exit());
    let cli = T::from_arg_matches(&loaded.matches).unwrap_or_else(|e| e.exit());
    (cli, loaded.problems)
}

/// A command line parsed over its configuration file.
pub struct Loaded {
    pub matches: ArgMatches,
    /// The file's problems, and the effective settings under `--print-config`.
    pub problems: Problems,
}

/// [`parse`] on given arguments (the first is the binary's name) and `NS_CONFIG` value.
/// Returns clap's error for a bad command line; the file's problems are in
/// [`Loaded::problems`], every one of them.
pub fn load(
    command: Command,
    args: Vec<OsString>,
    config_env: Option<OsString>,
) -> Result<Loaded, clap::Error> {
    let mut command = command.arg(config_arg()).arg(print_config_arg());
    let mut problems = Vec::new();
    let mut from_file = HashSet::new();
    let path = config_path(&args, config_env);
    if let Some(path) = &path {
        match read(path) {
            Ok(table) => {
                let applied = apply(command, &table);
                command = applied.command;
                from_file = applied.from_file;
                problems.extend(
                    applied
                        .problems
                        .into_iter()
                        .map(|p| format!("{}: {p}", path.display())),
                );
            }
            Err(problem) => problems.push(problem),
        }
    }
    let matches = command.try_get_matches_from_mut(args)?;
    let print = matches
        .get_flag(PRINT_CONFIG)
        .then(|| render(&command, &matches, &from_file, path.as_deref()));
    Ok(Loaded {
        matches,
        problems: Problems::new(problems, print),
    })
}

fn config_arg() -> Arg {
    Arg::new(CONFIG)
        .long(CONFIG)
        .env(CONFIG_ENV)
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "TOML file of settings, keyed by long option name (e.g. ws-listen = \"0.0.0.0:8080\")",
        )
        .long_help(
            "TOML file of settings, keyed by long option name without the dashes in front \
             (ws-listen = \"0.0.0.0:8080\"; ws_listen is read too). Precedence: a flag, then \
             its NS_* variable, then this file, then the default. A missing file, an unknown \
             key or a bad value stops the binary (exit 64) with every problem listed; \
             --print-config shows the result.",
        )
}

fn print_config_arg() -> Arg {
    Arg::new(PRINT_CONFIG)
        .long(PRINT_CONFIG)
        .action(ArgAction::SetTrue)
        .help("Print the effective settings as a configuration file (secrets redacted) and exit")
}

/// The configuration file named by `--config FILE` / `--config=FILE` (up to `--`), or else by
/// `NS_CONFIG`, as clap will see them; read before clap parses, since the file's values are
/// what clap falls back on.
fn config_path(args: &[OsString], config_env: Option<OsString>) -> Option<PathBuf> {
    let flag = format!("--{CONFIG}");
    let prefix = format!("--{CONFIG}=");
    let mut found = None;
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        } else if *arg == *flag {
            found = args.next().cloned();
        } else if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix(&prefix)) {
            found = Some(path.into());
        }
    }
    found
        .or(config_env.filter(|v| !v.is_empty()))
        .map(PathBuf::from)
}

fn read(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the configuration file {}: {e}", path.display()))?;
    text.parse::<toml::Table>().map_err(|e| {
        format!(
            "{}: not valid TOML: {}",
            path.display(),
            e.to_string().trim()
        )
    })
}

/// The options a configuration file may set: those with a long name, but help, version and
/// the file's own.
fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|arg| {
        arg.get_long().is_some()
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
            && arg.get_id() != CONFIG
            && arg.get_id() != PRINT_CONFIG
    })
}

/// What a configuration file's value is for an option.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A flag with no value: `true` or `false`.
    Flag,
    One(Scalar),
    /// Repeated, or split on a delimiter: an array.
    List(Scalar),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    Integer,
    Float,
    Bool,
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => Kind::Flag,
            ArgAction::Count => Kind::One(Scalar::Integer),
            ArgAction::Append => Kind::List(Scalar::of(arg)),
            _ if arg.get_value_delimiter().is_some() => Kind::List(Scalar::of(arg)),
            _ => Kind::One(Scalar::of(arg)),
        }
    }
}

impl Scalar {
    fn of(arg: &Arg) -> Scalar {
        let parsed = arg.get_value_parser().type_id();
        let integers = [
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<u128>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<i128>(),
            TypeId::of::<isize>(),
        ];
        if integers.iter().any(|t| parsed == *t) {
            Scalar::Integer
        } else if parsed == TypeId::of::<f64>() || parsed == TypeId::of::<f32>() {
            Scalar::Float
        } else if parsed == TypeId::of::<bool>() {
            Scalar::Bool
        } else {
            Scalar::Text
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scalar::Integer => "an integer",
            Scalar::Float => "a number",
            Scalar::Bool => "true or false",
            Scalar::Text => "a string",
        }
    }

    /// The value as clap reads it, if it is of this type.
    fn text(self, value: &toml::Value) -> Result<String, String> {
        match (self, value) {
            (Scalar::Integer, toml::Value::Integer(i)) => Ok(i.to_string()),
            (Scalar::Float, toml::Value::Float(f)) => Ok(f.to_string()),
            (Scalar::Float, toml::Value::Integer(i)) => Ok(i.to_string()),
            (Scalar::Bool, toml::Value::Boolean(b)) => Ok(b.to_string()),
            (Scalar::Text, toml::Value::String(s)) => Ok(s.clone()),
            (expected, got) => Err(format!(
                "must be {} (got {})",
                expected.describe(),
                a_type(got)
            )),
        }
    }

    /// A value clap holds, written as TOML.
    fn toml(self, value: &str) -> String {
        let bare = match self {
            Scalar::Integer => value.parse::<i64>().is_ok(),
            Scalar::Float => value.parse::<f64>().is_ok_and(f64::is_finite),
            Scalar::Bool => value == "true" || value == "false",
            Scalar::Text => false,
        };
        if bare {
            value.to_owned()
        } else {
            toml::Value::String(value.to_owned()).to_string()
        }
    }
}

fn a_type(value: &toml::Value) -> String {
    match value {
        toml::Value::Integer(_) => "an integer".into(),
        toml::Value::Array(_) => "an array".into(),
        other => format!("a {}", other.type_str()),
    }
}

/// A command whose options default to a configuration file's values.
struct Applied {
    command: Command,
    problems: Vec<String>,
    /// The options whose default the file gave.
    from_file: HashSet<Id>,
}

fn apply(command: Command, table: &toml::Table) -> Applied {
    let known: HashMap<String, Arg> = settings(&command)
        .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg.clone())))
        .collect();
    let mut problems = Vec::new();
    let mut unknown = Vec::new();
    let mut defaults: HashMap<Id, Vec<String>> = HashMap::new();
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = known.get(&long) else {
            unknown.push(key);
            continue;
        };
        if let Some(first) = seen.insert(long.clone(), key) {
            problems.push(format!("`{first}` and `{key}` are the same setting"));
            continue;
        }
        match values(arg, &long, value) {
            Ok(values) => {
                defaults.insert(arg.get_id().clone(), values);
            }
            Err(problem) => problems.push(format!("`{key}` {problem}")),
        }
    }
    problems.extend(unknown.into_iter().map(|key| {
        format!("unknown key `{key}` (the keys are the long options that --help lists)")
    }));
    let from_file = defaults.keys().cloned().collect();
    // In place: `mut_arg` would move each option to the end of --help.
    let command = command.mut_args(|arg| match defaults.remove(arg.get_id()) {
        Some(values) => arg.default_values(values),
        None => arg,
    });
    Applied {
        command,
        problems,
        from_file,
    }
}

/// The values a file's entry gives an option, as clap reads them, or what is wrong with it.
fn values(arg: &Arg, long: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let values = match (Kind::of(arg), value) {
        // A flag takes no value: its default is the outcome.
        (Kind::Flag, toml::Value::Boolean(b)) => return Ok(vec![b.to_string()]),
        (Kind::Flag, other) => {
            return Err(format!("must be true or false (got {})", a_type(other)))
        }
        (Kind::List(scalar), toml::Value::Array(items)) => items
            .iter()
            .map(|item| scalar.text(item))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("items {e}"))?,
        (Kind::List(scalar), other) => {
            return Err(format!(
                "must be an array of {}s (got {})",
                scalar
                    .describe()
                    .trim_start_matches("a ")
                    .trim_start_matches("an "),
                a_type(other)
            ))
        }
        (Kind::One(scalar), value) => vec![scalar.text(value)?],
    };
    check(arg, long, &values)?;
    Ok(values)
}

/// Runs the values through the option's own value parser, as clap would on the command line:
/// on a command of that option alone, so that what the option requires of others is not
/// asked, and with neither its variable nor its default.
fn check(arg: &Arg, long: &str, values: &[String]) -> Result<(), String> {
    let mut probe = Arg::new(arg.get_id().clone())
        .long(long.to_owned())
        .action(ArgAction::Append)
        .value_parser(arg.get_value_parser().clone());
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.to_vec());
    }
    let result = Command::new("config")
        .no_binary_name(true)
        .color(ColorChoice::Never)
        .arg(probe)
        .try_get_matches_from(values.iter().map(|v| format!("--{long}={v}")));
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            Err(first.trim_start_matches("error: ").to_owned())
        }
    }
}

/// The effective settings as a configuration file: each option's help, then its value with
/// where that value came from.
fn render(
    command: &Command,
    matches: &ArgMatches,
    from_file: &HashSet<Id>,
    path: Option<&Path>,
) -> String {
    let mut out = String::new();
    let name = command.get_name();
    let version = command.get_version().unwrap_or_default();
    let _ = writeln!(
        out,
        "# Effective settings of {name} {version}, as a configuration file (--config)."
    );
    let _ = writeln!(
        out,
        "# Precedence: command line, then NS_* variable, then configuration file, then default;\n\
         # the comment after each value says where it came from. Secrets are shown as \"{REDACTED}\"."
    );
    if let Some(path) = path {
        let _ = writeln!(out, "# Configuration file: {}", path.display());
    }
    for arg in settings(command) {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        out.push('\n');
        if let Some(help) = arg.get_help() {
            let help = help.to_string();
            let _ = writeln!(out, "# {}", help.lines().next().unwrap_or_default());
        }
        let from_default = matches!(matches.value_source(id), Some(ValueSource::DefaultValue))
            && !from_file.contains(arg.get_id());
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "command line".to_owned(),
            Some(ValueSource::EnvVariable) => arg
                .get_env()
                .map(|env| env.to_string_lossy().into_owned())
                .unwrap_or_else(|| "environment".to_owned()),
            Some(ValueSource::DefaultValue) if !from_default => "configuration file".to_owned(),
            _ => "default".to_owned(),
        };
        // A built-in default is in --help already (`guest:guest` of the AMQP URL), and shown
        // as it is so that the output loads back to the same settings.
        let secret = is_secret(arg);
        let raw: Option<Vec<String>> = matches.get_raw(id).map(|values| {
            values
                .map(|v| {
                    let v = v.to_string_lossy();
                    if from_default {
                        v.into_owned()
                    } else if secret {
                        REDACTED.to_owned()
                    } else {
                        redact_url(&v)
                    }
                })
                .collect()
        });
        let value = match (Kind::of(arg), raw) {
            (Kind::List(_), None) => "[]".to_owned(),
            (_, None) => {
                let _ = writeln!(out, "# {long} = (not set)");
                continue;
            }
            (Kind::Flag, Some(values)) => Scalar::Bool.toml(values.last().map_or("", |v| v)),
            (Kind::One(scalar), Some(values)) => scalar.toml(values.last().map_or("", |v| v)),
            (Kind::List(scalar), Some(values)) => {
                let items: Vec<String> = values.iter().map(|v| scalar.toml(v)).collect();
                format!("[{}]", items.join(", "))
            }
        };
        let _ = writeln!(out, "{long} = {value}  # {source}");
    }
    out
}

/// Whether an option's value is not to be shown: the cluster secret, and whatever hides its
/// variable's value from `--help`.
fn is_secret(arg: &Arg) -> bool {
    arg.is_hide_env_values_set() || arg.get_long() == Some("secret")
}

/// `scheme://user:password@host...` with the password replaced by [`REDACTED`]; anything
/// else as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A command line like a binary's: every kind of option.
    #[derive(Parser, Debug, PartialEq)]
    #[command(name = "demo", version)]
    struct Demo {
        /// Address of the UA side.
        #[arg(long, env = "NS_CLI_TEST_UNSET_LISTEN", default_value = "0.0.0.0:8080")]
        ws_listen: SocketAddr,
        /// A limit.
        #[arg(long, default_value_t = 10)]
        limit: u64,
        /// How far ahead.
        #[arg(long)]
        skew: Option<i64>,
        /// JSON logs.
        #[arg(long)]
        json: bool,
        /// Networks.
        #[arg(long, value_delimiter = ',')]
        nets: Vec<std::net::IpAddr>,
        /// The secret.
        #[arg(long, env = "NS_CLI_TEST_UNSET_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Broker.
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
    }

    /// A configuration file of this text, removed when dropped.
    struct File(PathBuf);

    impl File {
        fn new(text: &str) -> File {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "ns-runtime-cli-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            File(path)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn run(args: &[&str], env: Option<&Path>) -> Loaded {
        let args = std::iter::once("demo").chain(args.iter().copied());
        load(
            Demo::command(),
            args.map(OsString::from).collect(),
            env.map(|p| p.as_os_str().to_owned()),
        )
        .unwrap()
    }

    fn demo(loaded: &Loaded) -> Demo {
        Demo::from_arg_matches(&loaded.matches).unwrap()
    }

    fn printed(loaded: &Loaded) -> String {
        loaded.problems.print_text().unwrap().to_owned()
    }

    #[test]
    fn a_file_value_beats_the_default_and_a_flag_beats_the_file() {
        let file = File::new("ws-listen = \"127.0.0.1:9000\"\nlimit = 5\njson = true\n");
        let path = file.0.to_str().unwrap();
        let loaded = run(&["--config", path], None);
        assert!(loaded.problems.list().is_empty());
        let d = demo(&loaded);
        assert_eq!(d.ws_listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!((d.limit, d.json, d.skew), (5, true, None));

        let d = demo(&run(&["--limit", "7", &format!("--config={path}")], None));
        assert_eq!((d.limit, d.ws_listen.port()), (7, 9000));

        // NS_CONFIG, when --config is not given.
        let d = demo(&run(&[], Some(&file.0)));
        assert_eq!(d.limit, 5);
        let other = File::new("limit = 6\n");
        let d = demo(&run(
            &["--config", other.0.to_str().unwrap()],
            Some(&file.0),
        ));
        assert_eq!(d.limit, 6);
    }

    #[test]
    fn both_spellings_of_a_key_are_read_but_not_both_at_once() {
        let file = File::new("ws_listen = \"127.0.0.1:9000\"\namqp-url = \"amqp://h/\"\n");
        let loaded = run(&["--config", file.0.to_str().unwrap()], None);
        assert!(loaded.problems.list().is_empty());
        assert_eq!(demo(&loaded).ws_listen.port(), 9000);
        assert_eq!(demo(&loaded).amqp_url, "amqp://h/");

        let file = File::new("ws_listen = \"127.0.0.1:9000\"\nws-listen = \"127.0.0.1:9001\"\n");
        let loaded = run(&["--config", file.0.to_str().unwrap()], None);
        assert_eq!(loaded.problems.list().len(), 1);
        assert!(loaded.problems.list()[0].contains("are the same setting"));
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_once() {
        let file = File::new(
            "color = \"red\"\nlimit = \"5\"\nws-listen = \"nowhere\"\njson = 1\n\
             nets = \"10.0.0.1\"\nskew = 1.5\n[extra]\nx = 1\n",
        );
        let loaded = run(&["--config", file.0.to_str().unwrap()], None);
        let problems = loaded.problems.list().join("\n");
        assert_eq!(loaded.problems.list().len(), 7, "{problems}");
        for needle in [
            "unknown key `color`",
            "unknown key `extra`",
            "`limit` must be an integer (got a string)",
            "`ws-listen` invalid value 'nowhere' for '--ws-listen <WS_LISTEN>'",
            "`json` must be true or false (got an integer)",
            "`nets` must be an array",
            "`skew` must be an integer (got a float)",
        ] {
            assert!(problems.contains(needle), "{needle:?} not in:\n{problems}");
        }
        // The settings the file got wrong keep their defaults.
        assert_eq!(demo(&loaded).limit, 10);
    }

    #[test]
    fn a_missing_or_malformed_file_is_a_problem() {
        let loaded = run(&["--config", "/nonexistent/ns.toml"], None);
        assert!(loaded.problems.list()[0].contains("reading the configuration file"));
        let file = File::new("limit = \n");
        let loaded = run(&["--config", file.0.to_str().unwrap()], None);
        assert!(loaded.problems.list()[0].contains("not valid TOML"));
    }

    #[test]
    fn lists_and_negative_numbers_come_from_a_file() {
        let file = File::new("nets = [\"10.0.0.1\", \"::1\"]\nskew = -5\n");
        let loaded = run(&["--config", file.0.to_str().unwrap()], None);
        assert!(
            loaded.problems.list().is_empty(),
            "{:?}",
            loaded.problems.list()
        );
        let d = demo(&loaded);
        assert_eq!(d.nets.len(), 2);
        assert_eq!(d.skew, Some(-5));
        let file = File::new("nets = [\"10.0.0.1\", \"not an address\"]\n");
        let loaded = run(&["--config", file.0.to_str().unwrap()], None);
        assert!(loaded.problems.list()[0].contains("'not an address'"));
    }

    #[test]
    fn print_config_says_where_each_value_came_from_and_hides_secrets() {
        let file = File::new(
            "limit = 5\namqp-url = \"amqp://user:hunter2@broker:5672/%2f\"\n\
             secret = \"0123456789abcdefXYZ\"\n",
        );
        let loaded = run(
            &[
                "--config",
                file.0.to_str().unwrap(),
                "--json",
                "--print-config",
            ],
            None,
        );
        let text = printed(&loaded);
        assert!(
            text.contains("\nlimit = 5  # configuration file\n"),
            "{text}"
        );
        assert!(text.contains("\njson = true  # command line\n"), "{text}");
        assert!(
            text.contains("\nws-listen = \"0.0.0.0:8080\"  # default\n"),
            "{text}"
        );
        assert!(text.contains("\n# skew = (not set)\n"), "{text}");
        assert!(text.contains("\nnets = []  # default\n"), "{text}");
        assert!(text.contains("\n# Address of the UA side\n"), "{text}");
        assert!(text.contains("\nsecret = \"<redacted>\"  # configuration file\n"));
        assert!(text.contains("amqp-url = \"amqp://user:<redacted>@broker:5672/%2f\""));
        assert!(!text.contains("hunter2") && !text.contains("0123456789abcdef"));
        assert!(!text.contains("print-config") && !text.contains("\nconfig"));
        assert!(run(&[], None).problems.print_text().is_none());
    }

    #[test]
    fn what_print_config_prints_is_a_configuration_file_of_the_same_settings() {
        let loaded = run(
            &[
                "--limit",
                "3",
                "--nets",
                "10.0.0.1,::1",
                "--skew=-2",
                "--json",
                "--print-config",
            ],
            None,
        );
        let again = File::new(&printed(&loaded));
        let reloaded = run(&["--config", again.0.to_str().unwrap()], None);
        assert!(
            reloaded.problems.list().is_empty(),
            "{:?}",
            reloaded.problems.list()
        );
        assert_eq!(demo(&reloaded), demo(&loaded));
    }

    #[test]
    fn the_file_is_found_as_clap_will_see_it() {
        let path = |args: &[&str], env: Option<&str>| {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            config_path(&args, env.map(OsString::from))
        };
        assert_eq!(path(&["x", "--config", "a"], None), Some("a".into()));
        assert_eq!(path(&["x", "--config=a"], Some("b")), Some("a".into()));
        assert_eq!(path(&["x"], Some("b")), Some("b".into()));
        assert_eq!(path(&["x"], Some("")), None);
        assert_eq!(path(&["x", "--", "--config", "a"], None), None);
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("mongodb://u:p@h:27017/db?x=1"),
            "mongodb://u:<redacted>@h:27017/db?x=1"
        );
        assert_eq!(
            redact_url("amqp://u:p:q@h/%2f"),
            "amqp://u:<redacted>@h/%2f"
        );
        assert_eq!(redact_url("amqp://u@h/"), "amqp://u@h/");
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact_url("0.0.0.0:8080"), "0.0.0.0:8080");
    }

    #[test]
    fn help_documents_the_file() {
        let mut command = Demo::command().arg(config_arg()).arg(print_config_arg());
        let help = command.render_long_help().to_string();
        assert!(help.contains("--config <FILE>") && help.contains("NS_CONFIG"));
        assert!(help.contains("--print-config"));
    }
}
