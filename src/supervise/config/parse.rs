//! Reading `weaver.toml`: finding the file, walking the TOML with its
//! spans, and checking every value, each problem reported with file, line
//! and column (all of them at once, in file order).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::expand::INSTANCE;
use super::model::{
    AliveCheck, AliveDetector, ComputeSpec, Condition, Config, Dependency, FailureMode, HookKind,
    HookSpec, Hooks, HttpSpec, OutputSpec, ProcessSpec, ReadyCheck, ReadyProbe, RestartPolicy,
    RunMode, Scheduling, StartPolicy, StdinMode,
};
use crate::supervise::duration::parse_duration;
use crate::supervise::graph::{cycle_path, find_cycles};

mod job;

// ---------------------------------------------------------------- errors

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------- finding and loading

/// Where the configuration is: `explicit` (`--config FILE`), else
/// `$WEAVER_CONFIG`, else `$XDG_CONFIG_HOME/weaver/weaver.toml` (or
/// `~/.config/weaver/weaver.toml` when `XDG_CONFIG_HOME` is unset or not
/// absolute) if that file exists. `None`: no file, so no processes. A
/// named file (flag or variable) is returned even if missing, so that
/// [`load`] reports it.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    locate_in(
        explicit,
        std::env::var_os("WEAVER_CONFIG"),
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
        |p| p.is_file(),
    )
}

/// [`locate`] with the environment and the file system passed in.
fn locate_in(
    explicit: Option<&Path>,
    weaver_config: Option<OsString>,
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = weaver_config.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = match xdg_config_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(xdg) => xdg,
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".config"),
    };
    let candidate = base.join("weaver").join(FILE_NAME);
    exists(&candidate).then_some(candidate)
}

/// The default file name.
const FILE_NAME: &str = "weaver.toml";

/// Read and parse `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &name),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: name,
            line: 0,
            col: 0,
            message: format!("cannot read the configuration: {e}"),
        }])),
    }
}

/// Parse and validate `text`; `file_name` only labels the errors.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let mut p = Parser::new(text, file_name);
            let message = e.message().trim().replace('\n', "; ");
            p.error(e.span().map(|s| s.start), format!("invalid TOML: {message}"));
            return Err(p.finish());
        }
    };
    let mut p = Parser::new(text, file_name);
    let config = p.document(doc.as_table());
    if p.errors.is_empty() {
        Ok(config)
    } else {
        Err(p.finish())
    }
}

// ---------------------------------------------------------------- signals

/// `"SIGTERM"`, `"TERM"`, `"term"`: a signal by name.
fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&full).map_err(|_| {
        format!("unknown signal \"{s}\": use a name like \"SIGTERM\", \"TERM\" or \"INT\"")
    })
}

// ---------------------------------------------------------------- the parser

/// `fleet` is read by `crate::fleet::config`.
const TOP_KEYS: &[&str] = &["compute", "process", "http", "job", "fleet"];
const HTTP_KEYS: &[&str] = &["listen", "allow_remote", "header_timeout", "idle_timeout"];
const RESTART_KEYS: &[&str] = &[
    "auto_restart",
    "restart_interval",
    "backoff_factor",
    "backoff_cap",
    "backoff_jitter",
    "stable_after",
    "max_restarts",
];
const COMPUTE_KEYS: &[&str] =
    &["command", "env", "workers", "ping_interval", "ping_timeout", "scheduling"];
const PROCESS_KEYS: &[&str] = &[
    "name",
    "command",
    "shell",
    "work_dir",
    "env",
    "pid_file",
    "priority",
    "after",
    "retry_count",
    "retry_interval",
    "start_duration",
    "instances",
    "gpus",
    "detached",
    "detectors",
    "stop_signal",
    "stop_timeout",
    "output",
    "hooks",
    "params",
    "stdin",
];
const DETECTOR_KEYS: &[&str] = &["alive", "ready"];
const ALIVE_KEYS: &[&str] = &["pid_file", "command", "interval"];
const READY_KEYS: &[&str] = &["command", "pid_file", "log_pattern", "interval", "timeout"];
const OUTPUT_KEYS: &[&str] = &["ring_bytes", "file", "max_file_bytes", "keep_files"];
const HOOKS_KEYS: &[&str] = &["pre_start", "post_start", "pre_stop", "post_stop"];
const HOOK_KEYS: &[&str] = &["command", "work_dir", "env", "timeout", "failure_mode", "run_mode"];
const AFTER_KEYS: &[&str] = &["name", "condition"];

/// A table being read: the table, where it starts (for errors about it as
/// a whole) and how errors name it (`[[process]] "web"`).
#[derive(Clone, Copy)]
struct Tbl<'d> {
    t: &'d dyn TableLike,
    at: usize,
    what: &'d str,
}

/// A value being read: the item, where it is, and its name for messages.
#[derive(Clone, Copy)]
struct Field<'d> {
    item: &'d Item,
    at: usize,
    key: &'d str,
    what: &'d str,
}

impl<'d> Field<'d> {
    fn value(&self) -> Option<&'d Value> {
        self.item.as_value()
    }

    fn type_name(&self) -> &'static str {
        match self.item {
            Item::None => "nothing",
            Item::Value(v) => v.type_name(),
            Item::Table(_) => "table",
            Item::ArrayOfTables(_) => "array of tables",
        }
    }
}

/// A dependency graph of declared entries (processes or jobs), for
/// [`Parser::report_cycles`]: whom each waits for (indices), their names,
/// the names each `after` gives, and the index of each name.
struct Cycles<'a> {
    waits: &'a [Vec<usize>],
    names: &'a [&'a str],
    after: &'a [Vec<&'a str>],
    first: &'a HashMap<&'a str, usize>,
}

/// Where each process (or job) was declared, for errors found after
/// reading.
struct Declared {
    at: usize,
    name_at: usize,
    /// The `after` entries with where each is.
    after_at: Vec<usize>,
    what: String,
}

struct Parser<'a> {
    file: &'a str,
    /// Byte offset of each line start.
    lines: Vec<usize>,
    text: &'a str,
    errors: Vec<(usize, ConfigError)>,
}

fn span_start(span: Option<Range<usize>>) -> Option<usize> {
    span.map(|s| s.start)
}

/// Edit distance counting a swap of neighbours as one edit (optimal string
/// alignment), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `known` to `word`, if close enough to be a typo.
pub(crate) fn suggest<'k>(word: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    known
        .into_iter()
        .map(|k| (distance(word, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// `" (did you mean \"k\"?)"` for a suggestion, else nothing.
pub(crate) fn did_you_mean(s: Option<&str>) -> String {
    s.map(|k| format!(" (did you mean \"{k}\"?)")).unwrap_or_default()
}

/// A TOML item as JSON.
fn toml_json(item: &Item) -> serde_json::Value {
    use serde_json::Value as J;
    fn value(v: &Value) -> J {
        match v {
            Value::String(s) => J::String(s.value().clone()),
            Value::Integer(i) => J::from(*i.value()),
            Value::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(J::Null, J::Number),
            Value::Boolean(b) => J::Bool(*b.value()),
            Value::Datetime(d) => J::String(d.value().to_string()),
            Value::Array(a) => J::Array(a.iter().map(value).collect()),
            Value::InlineTable(t) => {
                J::Object(t.iter().map(|(k, v)| (k.to_string(), value(v))).collect())
            }
        }
    }
    match item {
        Item::Value(v) => value(v),
        Item::Table(t) => J::Object(t.iter().map(|(k, v)| (k.to_string(), toml_json(v))).collect()),
        Item::ArrayOfTables(a) => J::Array(
            a.iter()
                .map(|t| J::Object(t.iter().map(|(k, v)| (k.to_string(), toml_json(v))).collect()))
                .collect(),
        ),
        Item::None => J::Null,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, file: &'a str) -> Self {
        let mut lines = vec![0];
        lines.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Parser { file, lines, text, errors: Vec::new() }
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.lines.partition_point(|&s| s <= offset);
        let start = self.lines[line - 1];
        let col = self.text.get(start..offset).map_or(1, |s| s.chars().count() + 1);
        (line, col)
    }

    fn error(&mut self, at: Option<usize>, message: String) {
        let offset = at.unwrap_or(0);
        let (line, col) = self.position(offset);
        self.errors.push((offset, ConfigError { file: self.file.into(), line, col, message }));
    }

    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ConfigErrors(self.errors.into_iter().map(|(_, e)| e).collect())
    }

    // ---- tables and fields

    fn check_keys(&mut self, tbl: Tbl<'_>, allowed: &[&[&str]]) {
        for (key, _) in tbl.t.iter() {
            if allowed.iter().any(|set| set.contains(&key)) {
                continue;
            }
            let at = tbl.t.key(key).and_then(|k| span_start(k.span())).unwrap_or(tbl.at);
            let hint = suggest(key, allowed.iter().flat_map(|s| s.iter().copied()));
            self.error(
                Some(at),
                format!("unknown key \"{key}\" in {}{}", tbl.what, did_you_mean(hint)),
            );
        }
    }

    fn field<'d>(&self, tbl: Tbl<'d>, key: &'d str) -> Option<Field<'d>> {
        let (k, item) = tbl.t.get_key_value(key)?;
        let at = span_start(item.span()).or(span_start(k.span())).unwrap_or(tbl.at);
        Some(Field { item, at, key, what: tbl.what })
    }

    fn wrong_type(&mut self, f: Field<'_>, want: &str) {
        let found = f.type_name();
        self.error(Some(f.at), format!("{} in {} must be {want}, not {found}", f.key, f.what));
    }

    fn invalid(&mut self, f: Field<'_>, why: impl fmt::Display) {
        self.error(Some(f.at), format!("{} in {}: {why}", f.key, f.what));
    }

    fn sub<'d>(&mut self, tbl: Tbl<'d>, key: &'d str, what: &'d str) -> Option<Tbl<'d>> {
        let f = self.field(tbl, key)?;
        match f.item.as_table_like() {
            Some(t) => Some(Tbl { t, at: f.at, what }),
            None => {
                self.wrong_type(f, "a table");
                None
            }
        }
    }

    fn string(&mut self, tbl: Tbl<'_>, key: &str) -> Option<String> {
        let f = self.field(tbl, key)?;
        match f.value().and_then(Value::as_str) {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(f, "a string");
                None
            }
        }
    }

    fn path(&mut self, tbl: Tbl<'_>, key: &str) -> Option<PathBuf> {
        let f = self.field(tbl, key)?;
        let s = self.string(tbl, key)?;
        if s.is_empty() {
            self.invalid(f, "must not be empty");
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn boolean(&mut self, tbl: Tbl<'_>, key: &str) -> Option<bool> {
        let f = self.field(tbl, key)?;
        let b = f.value().and_then(Value::as_bool);
        if b.is_none() {
            self.wrong_type(f, "true or false");
        }
        b
    }

    fn int(&mut self, tbl: Tbl<'_>, key: &str, min: i64, max: i64) -> Option<i64> {
        let f = self.field(tbl, key)?;
        let Some(n) = f.value().and_then(Value::as_integer) else {
            self.wrong_type(f, "an integer");
            return None;
        };
        if n < min || n > max {
            self.invalid(f, format!("{n} is out of range ({min}..={max})"));
            return None;
        }
        Some(n)
    }

    fn u32(&mut self, tbl: Tbl<'_>, key: &str, min: u32) -> Option<u32> {
        self.int(tbl, key, min.into(), u32::MAX.into()).map(|n| n as u32)
    }

    fn u64(&mut self, tbl: Tbl<'_>, key: &str, min: u64) -> Option<u64> {
        self.int(tbl, key, min as i64, i64::MAX).map(|n| n as u64)
    }

    fn float(&mut self, tbl: Tbl<'_>, key: &str, min: f64, max: f64) -> Option<f64> {
        let f = self.field(tbl, key)?;
        let v = f.value();
        let Some(x) =
            v.and_then(Value::as_float).or(v.and_then(Value::as_integer).map(|i| i as f64))
        else {
            self.wrong_type(f, "a number");
            return None;
        };
        if !(min..=max).contains(&x) {
            let max = if max.is_finite() { max.to_string() } else { String::new() };
            self.invalid(f, format!("{x} is out of range ({min}..{max})"));
            return None;
        }
        Some(x)
    }

    fn duration(&mut self, tbl: Tbl<'_>, key: &str) -> Option<Duration> {
        let f = self.field(tbl, key)?;
        match f.value() {
            Some(Value::String(s)) => match parse_duration(s.value()) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.invalid(f, e);
                    None
                }
            },
            Some(Value::Integer(i)) if *i.value() >= 0 => {
                Some(Duration::from_millis(*i.value() as u64))
            }
            Some(Value::Integer(_)) => {
                self.invalid(f, "a duration cannot be negative");
                None
            }
            _ => {
                self.wrong_type(f, "a duration (\"2s\", \"500ms\") or milliseconds");
                None
            }
        }
    }

    /// An argv: a non-empty array of strings, the first non-empty.
    fn argv(&mut self, f: Field<'_>) -> Option<Vec<String>> {
        let Some(arr) = f.value().and_then(Value::as_array) else {
            let hint = if f.value().is_some_and(Value::is_str) {
                "an array of strings (or set shell = true to run a string with /bin/sh -c)"
            } else {
                "an array of strings"
            };
            self.wrong_type(f, hint);
            return None;
        };
        let mut out = Vec::new();
        for v in arr.iter() {
            match v.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    let at = span_start(v.span()).unwrap_or(f.at);
                    let found = v.type_name();
                    self.error(
                        Some(at),
                        format!("{} in {} must hold only strings, not {found}", f.key, f.what),
                    );
                    return None;
                }
            }
        }
        if out.first().map_or(true, |s| s.is_empty()) {
            self.invalid(f, "the command is empty");
            return None;
        }
        Some(out)
    }

    /// `[process.params]`: every value as JSON (a datetime as its text),
    /// every name a valid parameter name, the whole within a weavelet
    /// document's size.
    fn params(&mut self, tbl: Tbl<'_>) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        for (k, item) in tbl.t.iter() {
            let at = tbl.t.key(k).and_then(|k| span_start(k.span())).or(span_start(item.span()));
            if let Err(e) = crate::weavelet::doc::check_param(k) {
                self.error(at, format!("{e} in {}", tbl.what));
                continue;
            }
            out.insert(k.to_string(), toml_json(item));
        }
        if let Err(e) = crate::weavelet::doc::check_doc(&out) {
            self.error(Some(tbl.at), format!("{}: {e}", tbl.what));
        }
        out
    }

    fn env(&mut self, tbl: Tbl<'_>, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(f) = self.field(tbl, key) else { return out };
        let Some(t) = f.item.as_table_like() else {
            self.wrong_type(f, "a table of strings");
            return out;
        };
        for (k, item) in t.iter() {
            let at = span_start(item.span()).or(t.key(k).and_then(|k| span_start(k.span())));
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.error(at, format!("bad variable name \"{k}\" in {key} of {}", f.what));
                continue;
            }
            match item.as_str() {
                Some(v) => {
                    out.insert(k.to_string(), v.to_string());
                }
                None => {
                    let found = item.type_name();
                    self.error(
                        at,
                        format!("{key}.{k} in {} must be a string, not {found}", f.what),
                    );
                }
            }
        }
        out
    }

    // ---- the document

    fn document(&mut self, root: &toml_edit::Table) -> Config {
        let top = Tbl { t: root, at: 0, what: "the top level" };
        self.check_keys(top, &[TOP_KEYS]);
        let mut config = Config::default();
        if let Some(t) = self.sub(top, "compute", "[compute]") {
            config.compute = self.compute(t);
        }
        if let Some(t) = self.sub(top, "http", "[http]") {
            config.http = self.http(t);
        }
        let (processes, declared) = self.declared(top, "process", Self::process);
        config.processes = processes;
        self.cross_check(&config, &declared);
        self.jobs(top, &mut config, &declared);
        config
    }

    /// Every `[[key]]` table read by `one`, in order, with where each was
    /// declared (its name, or its place, says which in messages).
    fn declared<S>(
        &mut self,
        top: Tbl<'_>,
        key: &'static str,
        mut one: impl FnMut(&mut Self, Tbl<'_>) -> (S, Vec<usize>, usize),
    ) -> (Vec<S>, Vec<Declared>) {
        let (mut specs, mut declared) = (Vec::new(), Vec::new());
        for (t, at) in self.tables(top, key) {
            let what = match t.get("name").and_then(Item::as_str) {
                Some(n) => format!("[[{key}]] \"{n}\""),
                None => format!("[[{key}]] #{}", declared.len() + 1),
            };
            let (spec, after_at, name_at) = one(self, Tbl { t, at, what: &what });
            specs.push(spec);
            declared.push(Declared { at, name_at, after_at, what });
        }
        (specs, declared)
    }

    /// The `[[key]]` tables (or an inline `key = [{...}]`), each with where
    /// it starts: `[[process]]` and `[[job]]`.
    fn tables<'d>(&mut self, top: Tbl<'d>, key: &'static str) -> Vec<(&'d dyn TableLike, usize)> {
        let Some(f) = self.field(top, key) else { return Vec::new() };
        match f.item {
            Item::ArrayOfTables(aot) => aot
                .iter()
                .map(|t| (t as &dyn TableLike, span_start(t.span()).unwrap_or(f.at)))
                .collect(),
            Item::Value(Value::Array(arr)) if arr.iter().all(Value::is_inline_table) => arr
                .iter()
                .filter_map(|v| {
                    let t = v.as_inline_table()?;
                    Some((t as &dyn TableLike, span_start(v.span()).unwrap_or(f.at)))
                })
                .collect(),
            _ => {
                self.wrong_type(f, &format!("an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    }

    fn compute(&mut self, tbl: Tbl<'_>) -> ComputeSpec {
        self.check_keys(tbl, &[COMPUTE_KEYS, RESTART_KEYS]);
        let command = self.field(tbl, "command").and_then(|f| self.argv(f));
        let env = self.env(tbl, "env");
        let workers = self.u32(tbl, "workers", 1);
        let restart = self.restart(tbl, RestartPolicy::COMPUTE);
        let ping_interval =
            self.duration(tbl, "ping_interval").unwrap_or(ComputeSpec::DEFAULT_PING_INTERVAL);
        let ping_timeout = match self.duration(tbl, "ping_timeout") {
            Some(d) if d.is_zero() => {
                if let Some(f) = self.field(tbl, "ping_timeout") {
                    self.invalid(f, "must be more than 0".to_string());
                }
                ComputeSpec::DEFAULT_PING_TIMEOUT
            }
            Some(d) => d,
            None => ComputeSpec::DEFAULT_PING_TIMEOUT,
        };
        let scheduling = self.choice(tbl, "scheduling", &Scheduling::CHOICES, Scheduling::Normal);
        ComputeSpec { command, env, workers, restart, ping_interval, ping_timeout, scheduling }
    }

    /// `key = "<a name in choices>"`: its value (`default` when the key is
    /// missing); another string is an error naming the choices.
    fn choice<T: Copy>(
        &mut self,
        tbl: Tbl<'_>,
        key: &str,
        choices: &[(&'static str, T)],
        default: T,
    ) -> T {
        let Some(f) = self.field(tbl, key) else { return default };
        let Some(given) = self.string(tbl, key) else { return default };
        if let Some(&(_, v)) = choices.iter().find(|(n, _)| *n == given) {
            return v;
        }
        let names: Vec<&str> = choices.iter().map(|&(n, _)| n).collect();
        let hint = suggest(&given, names.iter().copied());
        let msg =
            format!("unknown {key} \"{given}\": use {}{}", names.join(" or "), did_you_mean(hint));
        self.invalid(f, msg);
        default
    }

    fn http(&mut self, tbl: Tbl<'_>) -> Option<HttpSpec> {
        self.check_keys(tbl, &[HTTP_KEYS]);
        let allow_remote = self.boolean(tbl, "allow_remote").unwrap_or(false);
        let mut timeout = |key, default| match self.duration(tbl, key) {
            Some(d) if d.is_zero() => {
                if let Some(f) = self.field(tbl, key) {
                    self.invalid(f, "must be more than 0");
                }
                default
            }
            Some(d) => d,
            None => default,
        };
        let header_timeout = timeout("header_timeout", HttpSpec::DEFAULT_HEADER_TIMEOUT);
        let idle_timeout = timeout("idle_timeout", HttpSpec::DEFAULT_IDLE_TIMEOUT);
        let Some(f) = self.field(tbl, "listen") else {
            self.error(
                Some(tbl.at),
                "listen is required in [http], e.g. \"127.0.0.1:9464\"".into(),
            );
            return None;
        };
        let listen = self.string(tbl, "listen")?;
        match HttpSpec::check(&listen, allow_remote) {
            Ok(h) => Some(HttpSpec { header_timeout, idle_timeout, ..h }),
            Err(why) => {
                self.invalid(f, why);
                None
            }
        }
    }

    fn restart(&mut self, tbl: Tbl<'_>, d: RestartPolicy) -> RestartPolicy {
        RestartPolicy {
            auto_restart: self.boolean(tbl, "auto_restart").unwrap_or(d.auto_restart),
            restart_interval: self.duration(tbl, "restart_interval").unwrap_or(d.restart_interval),
            backoff_factor: self
                .float(tbl, "backoff_factor", 1.0, f64::INFINITY)
                .unwrap_or(d.backoff_factor),
            backoff_cap: self.duration(tbl, "backoff_cap").unwrap_or(d.backoff_cap),
            backoff_jitter: self.float(tbl, "backoff_jitter", 0.0, 1.0).unwrap_or(d.backoff_jitter),
            stable_after: self.duration(tbl, "stable_after").unwrap_or(d.stable_after),
            max_restarts: self.u32(tbl, "max_restarts", 0).unwrap_or(d.max_restarts),
        }
    }

    /// One `[[process]]`; also returns where each `after` entry is and where
    /// the name is.
    fn process(&mut self, tbl: Tbl<'_>) -> (ProcessSpec, Vec<usize>, usize) {
        self.check_keys(tbl, &[PROCESS_KEYS, RESTART_KEYS]);
        let name_at = self.field(tbl, "name").map_or(tbl.at, |f| f.at);
        let name = match self.string(tbl, "name") {
            Some(n) if valid_name(&n) => n,
            Some(n) => {
                self.error(
                    Some(name_at),
                    format!(
                        "bad process name \"{n}\": use letters, digits, '_' and '-' only \
                         (instances add \".N\")"
                    ),
                );
                n
            }
            None => {
                if self.field(tbl, "name").is_none() {
                    self.error(Some(tbl.at), format!("{} has no name", tbl.what));
                }
                String::new()
            }
        };
        let shell = self.boolean(tbl, "shell").unwrap_or(false);
        let command = self.command(tbl, shell);
        let (after, after_at) = self.after(tbl);
        let instances = self.u32(tbl, "instances", 1).unwrap_or(1);
        let start = StartPolicy {
            start_duration: self
                .duration(tbl, "start_duration")
                .unwrap_or(StartPolicy::DEFAULT.start_duration),
            retry_count: self
                .u32(tbl, "retry_count", 0)
                .unwrap_or(StartPolicy::DEFAULT.retry_count),
            retry_interval: self
                .duration(tbl, "retry_interval")
                .unwrap_or(StartPolicy::DEFAULT.retry_interval),
        };
        let stop_signal = self.field(tbl, "stop_signal").and_then(|f| {
            let s = self.string(tbl, "stop_signal")?;
            parse_signal(&s).map_err(|e| self.invalid(f, e)).ok()
        });
        let mut spec = ProcessSpec {
            name,
            command,
            shell,
            work_dir: self.path(tbl, "work_dir"),
            env: self.env(tbl, "env"),
            pid_file: self.path(tbl, "pid_file"),
            priority: self.int(tbl, "priority", i64::MIN, i64::MAX).unwrap_or(0),
            after,
            start,
            restart: self.restart(tbl, RestartPolicy::PROCESS),
            instances,
            gpus: self.gpus(tbl),
            detached: self.boolean(tbl, "detached").unwrap_or(false),
            alive: None,
            ready: None,
            stop_signal: stop_signal.unwrap_or(ProcessSpec::DEFAULT_STOP_SIGNAL),
            stop_timeout: self
                .duration(tbl, "stop_timeout")
                .unwrap_or(ProcessSpec::DEFAULT_STOP_TIMEOUT),
            output: OutputSpec::default(),
            hooks: Hooks::default(),
            params: serde_json::Map::new(),
            stdin: self.stdin(tbl),
        };
        let params_what = format!("{} params", tbl.what);
        if let Some(t) = self.sub(tbl, "params", &params_what) {
            spec.params = self.params(t);
        }
        let what = tbl.what;
        let det_what = format!("{what} detectors");
        if let Some(d) = self.sub(tbl, "detectors", &det_what) {
            self.check_keys(d, &[DETECTOR_KEYS]);
            let alive_what = format!("{what} detectors.alive");
            if let Some(a) = self.sub(d, "alive", &alive_what) {
                spec.alive = self.alive(a);
            }
            let ready_what = format!("{what} detectors.ready");
            if let Some(r) = self.sub(d, "ready", &ready_what) {
                spec.ready = self.ready(r);
            }
        }
        let out_what = format!("{what} output");
        if let Some(o) = self.sub(tbl, "output", &out_what) {
            spec.output = self.output(o);
        }
        let hooks_what = format!("{what} hooks");
        if let Some(h) = self.sub(tbl, "hooks", &hooks_what) {
            self.check_keys(h, &[HOOKS_KEYS]);
            for kind in HookKind::ALL {
                let hook_what = format!("{what} hooks.{}", kind.name());
                if let Some(t) = self.sub(h, kind.name(), &hook_what) {
                    *spec.hooks.get_mut(kind) = self.hook(t, kind);
                }
            }
        }
        self.process_rules(tbl, &mut spec);
        (spec, after_at, name_at)
    }

    fn command(&mut self, tbl: Tbl<'_>, shell: bool) -> Vec<String> {
        let Some(f) = self.field(tbl, "command") else {
            self.error(Some(tbl.at), format!("{} has no command", tbl.what));
            return Vec::new();
        };
        if !shell {
            return self.argv(f).unwrap_or_default();
        }
        match f.value().and_then(Value::as_str) {
            Some(s) if s.trim().is_empty() => {
                self.invalid(f, "the command is empty");
                Vec::new()
            }
            Some(s) => vec![s.to_string()],
            None => {
                self.wrong_type(f, "a string when shell = true");
                Vec::new()
            }
        }
    }

    fn after(&mut self, tbl: Tbl<'_>) -> (Vec<Dependency>, Vec<usize>) {
        let (mut deps, mut ats) = (Vec::new(), Vec::new());
        let Some(f) = self.field(tbl, "after") else { return (deps, ats) };
        let Some(arr) = f.value().and_then(Value::as_array) else {
            self.wrong_type(f, "an array of names or { name, condition } tables");
            return (deps, ats);
        };
        for v in arr.iter() {
            let at = span_start(v.span()).unwrap_or(f.at);
            if let Some(s) = v.as_str() {
                deps.push(Dependency { name: s.to_string(), condition: Condition::Started });
                ats.push(at);
                continue;
            }
            let Some(t) = v.as_inline_table() else {
                let found = v.type_name();
                self.error(
                    Some(at),
                    format!(
                        "after in {} must hold names or {{ name, condition }} tables, not {found}",
                        f.what
                    ),
                );
                continue;
            };
            let what = format!("an after entry of {}", f.what);
            let entry = Tbl { t, at, what: &what };
            self.check_keys(entry, &[AFTER_KEYS]);
            let name = self.string(entry, "name");
            if name.is_none() && self.field(entry, "name").is_none() {
                self.error(Some(at), format!("{what} has no name"));
            }
            let condition = match self.field(entry, "condition") {
                None => Some(Condition::Started),
                Some(cf) => match self.string(entry, "condition").as_deref() {
                    Some("started") => Some(Condition::Started),
                    Some("ready") => Some(Condition::Ready),
                    Some("exited_ok") => Some(Condition::ExitedOk),
                    Some(other) => {
                        let hint = suggest(other, ["started", "ready", "exited_ok"]);
                        self.invalid(
                            cf,
                            format!(
                                "unknown condition \"{other}\": use started, ready or \
                                 exited_ok{}",
                                did_you_mean(hint)
                            ),
                        );
                        None
                    }
                    None => None,
                },
            };
            if let (Some(name), Some(condition)) = (name, condition) {
                deps.push(Dependency { name, condition });
                ats.push(at);
            }
        }
        (deps, ats)
    }

    fn gpus(&mut self, tbl: Tbl<'_>) -> Vec<Vec<u32>> {
        let Some(f) = self.field(tbl, "gpus") else { return Vec::new() };
        let want = "a list of device numbers or of lists of device numbers";
        let Some(arr) = f.value().and_then(Value::as_array) else {
            self.wrong_type(f, want);
            return Vec::new();
        };
        let device = |v: &Value| v.as_integer().and_then(|i| u32::try_from(i).ok());
        let mut out = Vec::new();
        for v in arr.iter() {
            let at = span_start(v.span()).unwrap_or(f.at);
            let entry: Option<Vec<u32>> = match v.as_array() {
                Some(inner) if !inner.is_empty() => inner.iter().map(device).collect(),
                Some(_) => None,
                None => device(v).map(|d| vec![d]),
            };
            match entry {
                Some(e) => out.push(e),
                None => self.error(
                    Some(at),
                    format!("gpus in {}: each entry must be {want} (>= 0, non-empty)", f.what),
                ),
            }
        }
        if arr.is_empty() {
            self.invalid(f, "the list is empty (leave gpus out to not pin devices)");
        }
        out
    }

    fn alive(&mut self, tbl: Tbl<'_>) -> Option<AliveDetector> {
        self.check_keys(tbl, &[ALIVE_KEYS]);
        let interval = self.duration(tbl, "interval").unwrap_or(AliveDetector::DEFAULT_INTERVAL);
        let pid_file = self.path(tbl, "pid_file");
        let command = self.field(tbl, "command").and_then(|f| self.argv(f));
        let check = match (pid_file, command) {
            (Some(p), None) => AliveCheck::PidFile(p),
            (None, Some(c)) => AliveCheck::Command(c),
            (Some(_), Some(_)) => {
                self.error(
                    Some(tbl.at),
                    format!("{}: give pid_file or command, not both", tbl.what),
                );
                return None;
            }
            (None, None) => {
                if self.field(tbl, "pid_file").is_none() && self.field(tbl, "command").is_none() {
                    self.error(Some(tbl.at), format!("{}: give pid_file or command", tbl.what));
                }
                return None;
            }
        };
        Some(AliveDetector { check, interval })
    }

    fn ready(&mut self, tbl: Tbl<'_>) -> Option<ReadyProbe> {
        self.check_keys(tbl, &[READY_KEYS]);
        let interval = self.duration(tbl, "interval").unwrap_or(ReadyProbe::DEFAULT_INTERVAL);
        let timeout = self.duration(tbl, "timeout").unwrap_or(ReadyProbe::DEFAULT_TIMEOUT);
        let given: Vec<&str> = ["command", "pid_file", "log_pattern"]
            .into_iter()
            .filter(|k| tbl.t.contains_key(k))
            .collect();
        if given.len() != 1 {
            self.error(
                Some(tbl.at),
                format!(
                    "{}: give exactly one of command, pid_file, log_pattern (found {})",
                    tbl.what,
                    if given.is_empty() { "none".to_string() } else { given.join(", ") }
                ),
            );
            return None;
        }
        let check = match given[0] {
            "command" => {
                ReadyCheck::Command(self.field(tbl, "command").and_then(|f| self.argv(f))?)
            }
            "pid_file" => ReadyCheck::PidFile(self.path(tbl, "pid_file")?),
            _ => {
                let f = self.field(tbl, "log_pattern")?;
                let s = self.string(tbl, "log_pattern")?;
                if s.is_empty() {
                    self.invalid(f, "must not be empty");
                    return None;
                }
                ReadyCheck::LogPattern(s)
            }
        };
        Some(ReadyProbe { check, interval, timeout })
    }

    fn output(&mut self, tbl: Tbl<'_>) -> OutputSpec {
        self.check_keys(tbl, &[OUTPUT_KEYS]);
        let d = OutputSpec::default();
        OutputSpec {
            ring_bytes: self
                .u64(tbl, "ring_bytes", OutputSpec::MIN_RING_BYTES)
                .map_or(d.ring_bytes, |n| n as usize),
            file: self.path(tbl, "file"),
            max_file_bytes: self.u64(tbl, "max_file_bytes", 1).unwrap_or(d.max_file_bytes),
            keep_files: self.u32(tbl, "keep_files", 0).unwrap_or(d.keep_files),
        }
    }

    fn hook(&mut self, tbl: Tbl<'_>, kind: HookKind) -> Option<HookSpec> {
        self.check_keys(tbl, &[HOOK_KEYS]);
        let command = match self.field(tbl, "command") {
            Some(f) => self.argv(f),
            None => {
                self.error(Some(tbl.at), format!("{} has no command", tbl.what));
                None
            }
        };
        let failure_mode = match self.field(tbl, "failure_mode") {
            None if kind == HookKind::PreStart => Some(FailureMode::Fail),
            None => Some(FailureMode::Ignore),
            Some(f) => match self.string(tbl, "failure_mode").as_deref() {
                Some("ignore") => Some(FailureMode::Ignore),
                Some("fail") => Some(FailureMode::Fail),
                Some("retry") => Some(FailureMode::Retry),
                Some(other) => {
                    let hint = suggest(other, ["ignore", "fail", "retry"]);
                    let msg = format!(
                        "unknown mode \"{other}\": use ignore, fail or retry{}",
                        did_you_mean(hint)
                    );
                    self.invalid(f, msg);
                    None
                }
                None => None,
            },
        };
        let run_mode = match self.field(tbl, "run_mode") {
            None => Some(RunMode::Blocking),
            Some(f) => match self.string(tbl, "run_mode").as_deref() {
                Some("blocking") => Some(RunMode::Blocking),
                Some("async") => Some(RunMode::Async),
                Some(other) => {
                    let hint = suggest(other, ["blocking", "async"]);
                    let msg = format!(
                        "unknown mode \"{other}\": use blocking or async{}",
                        did_you_mean(hint)
                    );
                    self.invalid(f, msg);
                    None
                }
                None => None,
            },
        };
        let work_dir = self.path(tbl, "work_dir");
        let env = self.env(tbl, "env");
        let timeout = self.duration(tbl, "timeout").unwrap_or(HookSpec::DEFAULT_TIMEOUT);
        Some(HookSpec {
            command: command?,
            work_dir,
            env,
            timeout,
            failure_mode: failure_mode?,
            run_mode: run_mode?,
        })
    }

    /// `stdin = "null" | "pipe"`.
    fn stdin(&mut self, tbl: Tbl<'_>) -> StdinMode {
        self.choice(tbl, "stdin", &StdinMode::CHOICES, StdinMode::Null)
    }

    /// Rules about one process as a whole.
    fn process_rules(&mut self, tbl: Tbl<'_>, spec: &mut ProcessSpec) {
        let what = tbl.what;
        if spec.detached && spec.stdin == StdinMode::Pipe {
            let at = self.field(tbl, "stdin").map_or(tbl.at, |f| f.at);
            self.error(
                Some(at),
                format!(
                    "{what} is detached: the process that stays is not weaver's child, so \
                     stdin = \"pipe\" cannot reach it; remove one of the two"
                ),
            );
        }
        if spec.detached {
            let at = self.field(tbl, "detached").map_or(tbl.at, |f| f.at);
            match (&spec.alive, &spec.pid_file) {
                (Some(AliveDetector { check: AliveCheck::PidFile(_), .. }), _) => {}
                (Some(AliveDetector { check: AliveCheck::Command(_), .. }), _) => self.error(
                    Some(at),
                    format!(
                        "{what} is detached: it is found, watched and stopped through a pid \
                         file, so detectors.alive must be a pid_file, not a command"
                    ),
                ),
                (None, Some(p)) => {
                    spec.alive = Some(AliveDetector {
                        check: AliveCheck::PidFile(p.clone()),
                        interval: AliveDetector::DEFAULT_INTERVAL,
                    })
                }
                (None, None) => self.error(
                    Some(at),
                    format!(
                        "{what} is detached but has no pid_file: weaver could not find, watch \
                         or stop it"
                    ),
                ),
            }
        }
        if spec.instances > 1 {
            let own_files = [
                ("pid_file", spec.pid_file.clone(), self.field(tbl, "pid_file").map(|f| f.at)),
                ("output.file", spec.output.file.clone(), None),
            ];
            for (key, path, at) in own_files {
                if path.is_some_and(|p| !p.to_string_lossy().contains(INSTANCE)) {
                    self.error(
                        Some(at.unwrap_or(tbl.at)),
                        format!(
                            "{key} in {what} must contain {{instance}}: its {} instances would \
                             share one file",
                            spec.instances
                        ),
                    );
                }
            }
        }
        if spec.detached
            && spec.ready.as_ref().is_some_and(|r| matches!(r.check, ReadyCheck::LogPattern(_)))
        {
            self.error(
                Some(tbl.at),
                format!("{what}: log_pattern cannot work for a detached process (its output is not ours)"),
            );
        }
    }

    /// Rules across processes: unique names, known `after` names, no cycles.
    fn cross_check(&mut self, config: &Config, declared: &[Declared]) {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, p) in config.processes.iter().enumerate() {
            if p.name.is_empty() {
                continue;
            }
            if let Some(&j) = first.get(p.name.as_str()) {
                let (line, _) = self.position(declared[j].at);
                self.error(
                    Some(declared[i].name_at),
                    format!(
                        "duplicate process name \"{}\" (first declared on line {line})",
                        p.name
                    ),
                );
            } else {
                first.insert(&p.name, i);
            }
        }
        let names: Vec<&str> = first.keys().copied().collect();
        let mut waits = vec![Vec::new(); config.processes.len()];
        for (i, p) in config.processes.iter().enumerate() {
            for (dep, &at) in p.after.iter().zip(&declared[i].after_at) {
                match first.get(dep.name.as_str()) {
                    Some(&j)
                        if dep.condition == Condition::ExitedOk
                            && config.processes[j].restart.auto_restart =>
                    {
                        waits[i].push(j);
                        self.error(
                            Some(at),
                            format!(
                                "{} waits for \"{}\" to exit with code 0, but it has \
                                 auto_restart = true, so it never stays exited (set \
                                 auto_restart = false on it)",
                                declared[i].what, dep.name
                            ),
                        );
                    }
                    Some(&j) => waits[i].push(j),
                    None => {
                        let mut sorted = names.clone();
                        sorted.sort_unstable();
                        let hint = suggest(&dep.name, sorted);
                        self.error(
                            Some(at),
                            format!(
                                "{} waits for unknown process \"{}\"{}",
                                declared[i].what,
                                dep.name,
                                did_you_mean(hint)
                            ),
                        );
                    }
                }
            }
        }
        let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
        let after: Vec<Vec<&str>> = config
            .processes
            .iter()
            .map(|p| p.after.iter().map(|d| d.name.as_str()).collect())
            .collect();
        let cycles = Cycles { waits: &waits, names: &names, after: &after, first: &first };
        self.report_cycles(cycles, declared, "cycle");
    }

    /// Every cycle in `c.waits` is an error at the `after` entry of its
    /// first member that names the next one, listing the path.
    fn report_cycles(&mut self, c: Cycles<'_>, declared: &[Declared], label: &str) {
        for cycle in find_cycles(c.waits) {
            let path: Vec<&str> = cycle.iter().map(|&i| c.names[i]).collect();
            let start = cycle[0];
            let next = cycle.get(1).copied().unwrap_or(start);
            let at = c.after[start]
                .iter()
                .zip(&declared[start].after_at)
                .find(|(d, _)| c.first.get(*d) == Some(&next))
                .map_or(declared[start].at, |(_, &at)| at);
            self.error(Some(at), format!("{label}: {}", cycle_path(&path)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text, "weaver.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
    }

    const FULL: &str = r#"
[compute]
command = ["/opt/compute", "--fast"]
env = { A = "1" }
workers = 4
max_restarts = 0
restart_interval = "250ms"

[[process]]
name = "db"
command = ["postgres", "-D", "/data"]
priority = -10
stop_signal = "INT"
stop_timeout = "10s"
pid_file = "/run/db.pid"
[process.detectors.ready]
command = ["pg_isready"]
interval = "500ms"
timeout = "1m"

[[process]]
name = "web"
command = ["web", "--port", "80{instance}"]
work_dir = "/srv/{instance}"
env = { LOG = "/tmp/web-{instance}.log", PLAIN = "x" }
instances = 3
gpus = [[0, 1], [2, 3]]
after = ["db", { name = "migrate", condition = "exited_ok" }]
retry_count = 5
retry_interval = 2000
start_duration = "1.5s"
auto_restart = true
restart_interval = "2s"
backoff_factor = 3
backoff_cap = "1m30s"
backoff_jitter = 0.25
stable_after = "20s"
max_restarts = 0
output = { ring_bytes = 4096, file = "/tmp/web-{instance}.out", max_file_bytes = 100, keep_files = 2 }
[process.hooks.pre_start]
command = ["fetch", "{instance}"]
failure_mode = "retry"
run_mode = "async"
timeout = "5m"
env = { H = "h{instance}" }
[process.hooks.post_stop]
command = ["cleanup"]

[[process]]
name = "migrate"
command = "psql -f schema.sql && echo {instance}"
shell = true
auto_restart = false

[[process]]
name = "legacy"
command = ["legacyd"]
detached = true
pid_file = "/run/legacy.pid"
gpus = [1, 0]
"#;

    #[test]
    fn params_are_json_documents() {
        let text = r#"
[[process]]
name = "trainer"
command = ["train"]
[process.params]
lr = 0.01
optimizer = "adam"
warmup = 100
betas = [0.9, 0.999]
sched = { kind = "cosine", min = 1e-5 }
fused = true
[process.params.nested]
x = 1
"#;
        let c = parse(text, "weaver.toml").unwrap();
        let p = serde_json::Value::Object(c.processes[0].params.clone());
        assert_eq!(
            p,
            serde_json::json!({
                "lr": 0.01, "optimizer": "adam", "warmup": 100, "betas": [0.9, 0.999],
                "sched": {"kind": "cosine", "min": 1e-5}, "fused": true, "nested": {"x": 1}
            })
        );
        let e = errors("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nparams = { \"a b\" = 1 }\n");
        assert!(e[0].contains("bad parameter name"), "{e:?}");
        let e = errors("[[process]]\nname = \"a\"\ncommand = [\"x\"]\nparams = 3\n");
        assert!(e[0].contains("params"), "{e:?}");
    }

    #[test]
    fn a_full_file_parses_into_every_field() {
        let c = parse(FULL, "weaver.toml").unwrap();
        assert_eq!(c.compute.command.as_deref().unwrap(), ["/opt/compute", "--fast"]);
        assert_eq!(c.compute.workers, Some(4));
        assert_eq!(c.compute.restart.max_restarts, 0);
        assert_eq!(c.compute.restart.restart_interval, Duration::from_millis(250));
        assert_eq!(c.compute.restart.backoff_cap, RestartPolicy::COMPUTE.backoff_cap);
        assert_eq!(c.compute.env["A"], "1");
        let names: Vec<&str> = c.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["db", "web", "migrate", "legacy"]);

        let db = &c.processes[0];
        assert_eq!(db.priority, -10);
        assert_eq!(db.stop_signal, Signal::SIGINT);
        assert_eq!(db.stop_timeout, Duration::from_secs(10));
        let ready = db.ready.as_ref().unwrap();
        assert_eq!(ready.check, ReadyCheck::Command(vec!["pg_isready".into()]));
        assert_eq!(
            (ready.interval, ready.timeout),
            (Duration::from_millis(500), Duration::from_secs(60))
        );
        assert_eq!(db.restart, RestartPolicy::PROCESS);
        assert_eq!(db.start, StartPolicy::default());

        let web = &c.processes[1];
        assert_eq!(web.instances, 3);
        assert_eq!(
            web.after[1],
            Dependency { name: "migrate".into(), condition: Condition::ExitedOk }
        );
        assert_eq!(web.after[0].condition, Condition::Started);
        assert_eq!(
            web.start,
            StartPolicy {
                start_duration: Duration::from_millis(1500),
                retry_count: 5,
                retry_interval: Duration::from_secs(2)
            }
        );
        let r = web.restart;
        assert_eq!(r.backoff_factor, 3.0);
        assert_eq!(r.backoff_cap, Duration::from_secs(90));
        assert_eq!(r.backoff_jitter, 0.25);
        assert_eq!(r.stable_after, Duration::from_secs(20));
        assert_eq!(r.max_restarts, 0);
        assert_eq!(web.output.ring_bytes, 4096);
        assert_eq!(web.output.keep_files, 2);
        let pre = web.hooks.pre_start.as_ref().unwrap();
        assert_eq!(pre.failure_mode, FailureMode::Retry);
        assert_eq!(pre.run_mode, RunMode::Async);
        assert_eq!(pre.timeout, Duration::from_secs(300));
        let post = web.hooks.post_stop.as_ref().unwrap();
        assert_eq!((post.failure_mode, post.run_mode), (FailureMode::Ignore, RunMode::Blocking));
        assert_eq!(post.timeout, Duration::from_secs(30));

        let migrate = &c.processes[2];
        assert!(migrate.shell && !migrate.restart.auto_restart);

        let legacy = &c.processes[3];
        assert!(legacy.detached);
        let alive = legacy.alive.as_ref().unwrap();
        assert_eq!(
            alive.check,
            AliveCheck::PidFile("/run/legacy.pid".into()),
            "defaults to pid_file"
        );
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_location() {
        let text = r#"[[process]]
name = "web"
comand = ["x"]
instances = 0
stop_signal = "SIGFOO"
stop_timeout = "2 seconds"
after = ["dbb"]

[[process]]
name = "db"
command = []

[[process]]
name = "web"
command = ["y"]
"#;
        assert_eq!(
            errors(text),
            [
                "weaver.toml:1:1: [[process]] \"web\" has no command",
                "weaver.toml:3:1: unknown key \"comand\" in [[process]] \"web\" (did you mean \"command\"?)",
                "weaver.toml:4:13: instances in [[process]] \"web\": 0 is out of range (1..=4294967295)",
                "weaver.toml:5:15: stop_signal in [[process]] \"web\": unknown signal \"SIGFOO\": use a name like \"SIGTERM\", \"TERM\" or \"INT\"",
                "weaver.toml:6:16: stop_timeout in [[process]] \"web\": bad duration \"2 seconds\": write a number and a unit (ms, s, m, h) like \"500ms\", \"1.5s\" or \"1m30s\", or an integer of milliseconds",
                "weaver.toml:7:10: [[process]] \"web\" waits for unknown process \"dbb\" (did you mean \"db\"?)",
                "weaver.toml:11:11: command in [[process]] \"db\": the command is empty",
                "weaver.toml:14:8: duplicate process name \"web\" (first declared on line 1)",
            ]
        );
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let text = r#"
[[process]]
name = "a"
command = ["a"]
after = ["b"]
[[process]]
name = "b"
command = ["b"]
after = [{ name = "c", condition = "ready" }]
[[process]]
name = "c"
command = ["c"]
after = ["a"]
[[process]]
name = "self"
command = ["s"]
after = ["self"]
"#;
        assert_eq!(
            errors(text),
            ["weaver.toml:5:10: cycle: a -> b -> c -> a", "weaver.toml:17:10: cycle: self -> self"]
        );
    }

    #[test]
    fn nested_tables_and_values_are_checked() {
        let text = r#"
[[process]]
name = "x y"
command = "run me"
env = { GOOD = "1", BAD = 2 }
gpus = [0, -1, []]
detached = true
after = [{ name = "x", conditon = "ready" }, { name = "x", condition = "up" }, 3]
output = { ring_bytes = 10, colour = true }
[process.detectors]
ready = { log_pattern = "up", command = ["probe"] }
alive = { interval = "1s" }
[process.hooks]
pre_stat = { command = ["x"] }
post_stop = { command = ["y"], failure_mode = "retyr", run_mode = "sync", timeout = -5 }

[compute]
workers = 0
backoff_jitter = 1.5
backoff_factor = 0.5
bogus = 1

[extra]
"#;
        let got = errors(text);
        let want = [
            "weaver.toml:3:8: bad process name \"x y\": use letters, digits, '_' and '-' only (instances add \".N\")",
            "weaver.toml:4:11: command in [[process]] \"x y\" must be an array of strings (or set shell = true to run a string with /bin/sh -c), not string",
            "weaver.toml:5:27: env.BAD in [[process]] \"x y\" must be a string, not integer",
            "weaver.toml:6:12: gpus in [[process]] \"x y\": each entry must be a list of device numbers or of lists of device numbers (>= 0, non-empty)",
            "weaver.toml:6:16: gpus in [[process]] \"x y\": each entry must be a list of device numbers or of lists of device numbers (>= 0, non-empty)",
            "weaver.toml:7:12: [[process]] \"x y\" is detached but has no pid_file: weaver could not find, watch or stop it",
            "weaver.toml:8:10: [[process]] \"x y\" waits for unknown process \"x\"",
            "weaver.toml:8:24: unknown key \"conditon\" in an after entry of [[process]] \"x y\" (did you mean \"condition\"?)",
            "weaver.toml:8:72: condition in an after entry of [[process]] \"x y\": unknown condition \"up\": use started, ready or exited_ok",
            "weaver.toml:8:80: after in [[process]] \"x y\" must hold names or { name, condition } tables, not integer",
            "weaver.toml:9:25: ring_bytes in [[process]] \"x y\" output: 10 is out of range (1024..=9223372036854775807)",
            "weaver.toml:9:29: unknown key \"colour\" in [[process]] \"x y\" output",
            "weaver.toml:11:9: [[process]] \"x y\" detectors.ready: give exactly one of command, pid_file, log_pattern (found command, log_pattern)",
            "weaver.toml:12:9: [[process]] \"x y\" detectors.alive: give pid_file or command",
            "weaver.toml:14:1: unknown key \"pre_stat\" in [[process]] \"x y\" hooks (did you mean \"pre_start\"?)",
            "weaver.toml:15:47: failure_mode in [[process]] \"x y\" hooks.post_stop: unknown mode \"retyr\": use ignore, fail or retry (did you mean \"retry\"?)",
            "weaver.toml:15:67: run_mode in [[process]] \"x y\" hooks.post_stop: unknown mode \"sync\": use blocking or async (did you mean \"async\"?)",
            "weaver.toml:15:85: timeout in [[process]] \"x y\" hooks.post_stop: a duration cannot be negative",
            "weaver.toml:18:11: workers in [compute]: 0 is out of range (1..=4294967295)",
            "weaver.toml:19:18: backoff_jitter in [compute]: 1.5 is out of range (0..1)",
            "weaver.toml:20:18: backoff_factor in [compute]: 0.5 is out of range (1..)",
            "weaver.toml:21:1: unknown key \"bogus\" in [compute]",
            "weaver.toml:23:2: unknown key \"extra\" in the top level",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn files_shared_by_instances_and_syntax_errors_are_reported() {
        let text = "[[process]]\nname = \"w\"\ncommand = [\"w\"]\ninstances = 2\npid_file = \"/run/w.pid\"\n";
        assert_eq!(
            errors(text),
            ["weaver.toml:5:12: pid_file in [[process]] \"w\" must contain {instance}: its 2 instances would share one file"]
        );
        let text = "[[process]]\nname = \"a\"\ncommand = [\"a\"]\nafter = [{ name = \"b\", condition = \"exited_ok\" }]\n\
                    [[process]]\nname = \"b\"\ncommand = [\"b\"]\n";
        assert_eq!(
            errors(text),
            ["weaver.toml:4:10: [[process]] \"a\" waits for \"b\" to exit with code 0, but it has auto_restart = true, so it never stays exited (set auto_restart = false on it)"]
        );
        let e = errors("[[process]]\nname = \"w\ncommand = 1\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("weaver.toml:2:"), "{e:?}");
        assert!(e[0].contains("invalid TOML"), "{e:?}");
    }

    #[test]
    fn no_file_means_no_processes_and_an_empty_file_is_valid() {
        assert_eq!(parse("", "weaver.toml").unwrap(), Config::default());
        let missing = load(Path::new("/nonexistent/weaver.toml")).unwrap_err();
        assert_eq!(missing.0.len(), 1);
        assert!(
            missing.to_string().starts_with("/nonexistent/weaver.toml: cannot read"),
            "{missing}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weaver.toml");
        std::fs::write(&p, "[[process]]\nname = \"a\"\ncommand = [\"true\"]\n").unwrap();
        assert_eq!(load(&p).unwrap().processes[0].name, "a");
    }

    #[test]
    fn the_file_is_located_by_flag_then_variable_then_xdg_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        let flag = Path::new("/flag.toml");
        assert_eq!(locate_in(Some(flag), os("/env.toml"), None, None, no), Some(flag.into()));
        assert_eq!(locate_in(None, os("/env.toml"), None, None, no), Some("/env.toml".into()));
        assert_eq!(
            locate_in(None, os(""), os("/xdg"), os("/home/u"), yes),
            Some("/xdg/weaver/weaver.toml".into())
        );
        assert_eq!(
            locate_in(None, None, os("relative"), os("/home/u"), yes),
            Some("/home/u/.config/weaver/weaver.toml".into())
        );
        assert_eq!(locate_in(None, None, None, os("/home/u"), no), None, "no file: no processes");
        assert_eq!(locate_in(None, None, None, None, yes), None);
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("term"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("INT"), Ok(Signal::SIGINT));
        assert!(parse_signal("SIGNOPE").is_err());
    }

    #[test]
    fn suggestions_need_a_close_match() {
        assert_eq!(suggest("comand", PROCESS_KEYS.iter().copied()), Some("command"));
        assert_eq!(suggest("workdir", PROCESS_KEYS.iter().copied()), Some("work_dir"));
        assert_eq!(suggest("zzzzzz", PROCESS_KEYS.iter().copied()), None);
    }

    #[test]
    fn stdin_is_null_by_default_a_pipe_when_asked_and_never_for_a_detached_process() {
        let c = parse("[[process]]\nname = \"a\"\ncommand = [\"cat\"]\n", "t").unwrap();
        assert_eq!(c.processes[0].stdin, StdinMode::Null);
        let c = parse(
            "[[process]]\nname = \"a\"\ncommand = [\"cat\"]\nstdin = \"pipe\"\ninstances = 2\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.processes[0].stdin, StdinMode::Pipe);
        assert!(c.expand().iter().all(|i| i.stdin == StdinMode::Pipe), "every instance has one");
        assert_eq!(
            errors("[[process]]\nname = \"a\"\ncommand = [\"cat\"]\nstdin = \"pip\"\n"),
            ["weaver.toml:4:9: stdin in [[process]] \"a\": unknown stdin \"pip\": use null or pipe (did you mean \"pipe\"?)"]
        );
        let det = "[[process]]\nname = \"d\"\ncommand = [\"x\"]\ndetached = true\npid_file = \"/tmp/d.pid\"\nstdin = \"pipe\"\n";
        let e = errors(det);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("weaver.toml:6:9: [[process]] \"d\" is detached"), "{e:?}");
    }
}
