//! Reading a TOML document key by key, collecting every problem instead of stopping at the
//! first, and noticing keys nobody asked for (usually typos).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use crate::{Permissions, Problem, UnknownCallers};

pub(crate) struct Reader<'a> {
    table: Option<&'a Table>,
    file: &'a str,
    path: String,
    problems: &'a RefCell<Vec<Problem>>,
    /// Keys nothing read, apart from other problems: `serve` may demote them to warnings
    /// when a newer build wrote the file (see `Config::load_for_serve`).
    unknown: &'a RefCell<Vec<Problem>>,
    used: BTreeSet<String>,
}

static EMPTY: std::sync::LazyLock<Table> = std::sync::LazyLock::new(Table::new);

impl<'a> Reader<'a> {
    pub fn root(
        table: &'a Table,
        file: &'a str,
        problems: &'a RefCell<Vec<Problem>>,
        unknown: &'a RefCell<Vec<Problem>>,
    ) -> Reader<'a> {
        Reader {
            table: Some(table),
            file,
            path: String::new(),
            problems,
            unknown,
            used: BTreeSet::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn problem(&self, key: &str, message: String) {
        self.problems.borrow_mut().push(Problem {
            file: self.file.to_string(),
            key: self.key_path(key),
            message,
        });
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.used.insert(key.to_string());
        self.table.and_then(|t| t.get(key))
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.contains_key(key))
    }

    /// A sub-table; a missing one reads as empty, so its keys take their defaults.
    pub fn table(&mut self, key: &str) -> Reader<'a> {
        let path = self.key_path(key);
        let table = match self.get(key) {
            None => Some(&*EMPTY),
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.problem(key, format!("expected a table, found {}", other.type_str()));
                None
            }
        };
        Reader {
            table,
            file: self.file,
            path,
            problems: self.problems,
            unknown: self.unknown,
            used: BTreeSet::new(),
        }
    }

    /// A sub-table as it is, for a section another crate validates (a UPS register map).
    pub fn raw_table(&mut self, key: &str) -> Option<&'a Table> {
        match self.get(key) {
            Some(Value::Table(t)) => Some(t),
            None => None,
            Some(other) => {
                self.problem(key, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }

    /// A string or a list of strings, as a command line: a string is run by `/bin/sh -c`.
    pub fn command(&mut self, key: &str, default: &[&str]) -> Option<Vec<String>> {
        match self.get(key) {
            None => Some(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::String(s)) if !s.trim().is_empty() => {
                Some(vec!["/bin/sh".into(), "-c".into(), s.clone()])
            }
            Some(Value::String(_)) => {
                self.problem(
                    key,
                    "the command is empty; name a program, such as [\"systemctl\", \"poweroff\"]"
                        .into(),
                );
                None
            }
            Some(Value::Array(_)) => {
                let argv = self.string_list(key)?;
                if argv.is_empty() || argv[0].is_empty() {
                    self.problem(key, "the command must name a program".into());
                    return None;
                }
                Some(argv)
            }
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected a command such as [\"systemctl\", \"poweroff\"] or a shell line, found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    /// An array of tables (`[[key]]`), one reader per element.
    pub fn array_of_tables(&mut self, key: &str) -> Vec<Reader<'a>> {
        let base = self.key_path(key);
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::Table(t) => Some(Reader {
                        table: Some(t),
                        file: self.file,
                        path: format!("{base}[{}]", i + 1),
                        problems: self.problems,
                        unknown: self.unknown,
                        used: BTreeSet::new(),
                    }),
                    other => {
                        self.problem(
                            key,
                            format!(
                                "element {} should be a table, found {}",
                                i + 1,
                                other.type_str()
                            ),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.problem(
                    key,
                    format!("expected [[{key}]] tables, found {}", other.type_str()),
                );
                Vec::new()
            }
        }
    }

    pub fn string(&mut self, key: &str, default: Option<&str>) -> Option<String> {
        match self.get(key) {
            None => match default {
                Some(d) => Some(d.to_string()),
                None => {
                    self.problem(key, "is required".into());
                    None
                }
            },
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn parse_str<T>(
        &mut self,
        key: &str,
        default: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let s = self.string(key, default)?;
        match parse(&s) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    pub fn bool(&mut self, key: &str, default: bool) -> Option<bool> {
        match self.get(key) {
            None => Some(default),
            Some(Value::Boolean(b)) => Some(*b),
            Some(other) => {
                self.problem(
                    key,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn int(&mut self, key: &str, default: u64, min: u64, max: u64) -> Option<u64> {
        match self.get(key) {
            None => Some(default),
            Some(Value::Integer(i)) if *i >= 0 && (*i as u64) >= min && (*i as u64) <= max => {
                Some(*i as u64)
            }
            Some(Value::Integer(i)) => {
                self.problem(key, format!("{i} is out of range; use {min} to {max}"));
                None
            }
            Some(other) => {
                self.problem(
                    key,
                    format!("expected a whole number, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn float(&mut self, key: &str, default: f64, min: f64, max: f64) -> Option<f64> {
        let v = match self.get(key) {
            None => return Some(default),
            Some(Value::Float(f)) => *f,
            Some(Value::Integer(i)) => *i as f64,
            Some(other) => {
                self.problem(
                    key,
                    format!("expected a number, found {}", other.type_str()),
                );
                return None;
            }
        };
        if v.is_finite() && v >= min && v <= max {
            Some(v)
        } else {
            self.problem(key, format!("{v} is out of range; use {min} to {max}"));
            None
        }
    }

    /// A list of strings; a missing key reads as an empty list.
    pub fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.get(key) {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => {
                            self.problem(
                                key,
                                format!("expected a list of strings, found {item} in it"),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected a list of strings such as [\"a\", \"b\"], found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    /// A table of string values; a missing key reads as empty.
    pub fn string_map(&mut self, key: &str) -> Option<Vec<(String, String)>> {
        match self.get(key) {
            None => Some(Vec::new()),
            Some(Value::Table(t)) => {
                let mut out = Vec::new();
                for (k, v) in t {
                    match v.as_str() {
                        Some(s) => out.push((k.clone(), s.to_string())),
                        None => {
                            self.problem(
                                key,
                                format!("{k} should be a string pattern, found {}", v.type_str()),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected a table such as {{ \"(0008,1030)\" = \"*HEAD*\" }}, found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    pub fn port(&mut self, key: &str, default: Option<u16>) -> Option<u16> {
        if default.is_none() && !self.has(key) {
            self.used.insert(key.to_string());
            self.problem(key, "is required".into());
            return None;
        }
        self.int(key, u64::from(default.unwrap_or(0)), 1, 65_535)
            .map(|p| p as u16)
    }

    pub fn seconds(&mut self, key: &str, default: u64, min: u64, max: u64) -> Option<Duration> {
        self.int(key, default, min, max).map(Duration::from_secs)
    }

    pub fn path(&mut self, key: &str, default: Option<&str>) -> Option<PathBuf> {
        let s = self.string(key, default)?;
        if s.is_empty() {
            self.problem(key, "must not be empty".into());
            return None;
        }
        Some(PathBuf::from(s))
    }

    pub fn optional_path(&mut self, key: &str) -> Option<PathBuf> {
        if self.has(key) {
            self.path(key, None)
        } else {
            self.used.insert(key.to_string());
            None
        }
    }

    pub fn unknown_callers(&mut self, key: &str) -> Option<UnknownCallers> {
        match self.get(key) {
            None => Some(UnknownCallers::Reject),
            Some(Value::Boolean(true)) => Some(UnknownCallers::Any),
            Some(Value::Boolean(false)) => Some(UnknownCallers::Reject),
            Some(Value::String(s)) if s == "loopback" => Some(UnknownCallers::Loopback),
            Some(other) => {
                self.problem(
                    key,
                    format!("expected true, false or \"loopback\", found {other}"),
                );
                None
            }
        }
    }

    pub fn permissions(&mut self, key: &str) -> Option<Permissions> {
        match self.get(key) {
            None => Some(Permissions::ALL),
            Some(Value::Array(items)) => {
                let mut p = Permissions {
                    store: false,
                    find: false,
                    move_: false,
                    get: false,
                };
                let mut ok = true;
                for item in items {
                    match item.as_str() {
                        Some("store") => p.store = true,
                        Some("find") => p.find = true,
                        Some("move") => p.move_ = true,
                        Some("get") => p.get = true,
                        _ => {
                            self.problem(key, format!("{item} is not a service; use \"store\", \"find\", \"move\" or \"get\""));
                            ok = false;
                        }
                    }
                }
                ok.then_some(p)
            }
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected a list such as [\"store\", \"find\"], found {}",
                        other.type_str()
                    ),
                );
                None
            }
        }
    }

    /// Reports keys present in the table that nothing read.
    pub fn finish(self) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            if !self.used.contains(key) {
                let known: Vec<&String> = self.used.iter().collect();
                let hint = known
                    .iter()
                    .find(|k| close(k, key))
                    .map(|k| format!("; did you mean {k:?}?"))
                    .unwrap_or_default();
                self.unknown.borrow_mut().push(Problem {
                    file: self.file.to_string(),
                    key: self.key_path(key),
                    message: format!("unknown key{hint}"),
                });
            }
        }
    }
}

/// Whether two keys differ by at most two edits (a typo).
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}
