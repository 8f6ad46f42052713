//! Vendor register profiles: where a UPS keeps its status and measurements, read from TOML
//! and checked in full before anything talks to the hardware.
//!
//! The schema is documented in `configs/ups/README.md`. Parsing walks the TOML by hand rather
//! than through serde so that one pass reports every problem (an unknown key, a bit that does
//! not fit its register, a missing `on_battery` flag) instead of stopping at the first.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use toml::{Table, Value};

/// The profiles shipped in the binary, by name. The files live in `configs/ups/` so that they
/// can be read and reviewed as data; `include_str!` keeps the default build free of files on
/// disk.
const BUILTIN: &[(&str, &str)] = &[
    ("apc-smt", include_str!("../../../configs/ups/apc-smt.toml")),
    (
        "tripplite-modbuscard",
        include_str!("../../../configs/ups/tripplite-modbuscard.toml"),
    ),
];

const BUILTIN_NAMES: &[&str] = &["apc-smt", "tripplite-modbuscard"];

/// Modbus allows at most 125 registers in one read request.
const MAX_READ_REGISTERS: u32 = 125;
/// And at most 2000 coils or discrete inputs.
const MAX_READ_BITS: u32 = 2000;

/// One of the four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Function {
    /// Coils: read with function 1, written with 5 or 15.
    Coil,
    /// Discrete inputs: read with function 2.
    Discrete,
    /// Holding registers: read with function 3, written with 6 or 16.
    Holding,
    /// Input registers: read with function 4.
    Input,
}

impl Function {
    fn parse(text: &str) -> Option<Function> {
        match text {
            "coil" => Some(Function::Coil),
            "discrete" => Some(Function::Discrete),
            "holding" => Some(Function::Holding),
            "input" => Some(Function::Input),
            _ => None,
        }
    }

    /// Coils and discrete inputs hold single bits, the others 16-bit registers.
    pub(crate) fn is_bit(self) -> bool {
        matches!(self, Function::Coil | Function::Discrete)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Function::Coil => "coils",
            Function::Discrete => "discrete inputs",
            Function::Holding => "holding registers",
            Function::Input => "input registers",
        })
    }
}

/// How the registers at a location make up one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    U16,
    I16,
    /// Two registers, the high word first (the Modbus convention, and APC's).
    U32,
    /// Two registers, the low word first (some gateways).
    U32Le,
    I32,
    I32Le,
    /// A coil or discrete input.
    Bit,
}

impl ValueType {
    fn parse(text: &str) -> Option<ValueType> {
        match text {
            "u16" => Some(ValueType::U16),
            "i16" => Some(ValueType::I16),
            "u32" => Some(ValueType::U32),
            "u32_le" => Some(ValueType::U32Le),
            "i32" => Some(ValueType::I32),
            "i32_le" => Some(ValueType::I32Le),
            _ => None,
        }
    }

    /// Registers (or bits) the value spans.
    pub(crate) fn width(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 | ValueType::Bit => 1,
            _ => 2,
        }
    }

    fn bits(self) -> u32 {
        match self {
            ValueType::Bit => 1,
            ValueType::U16 | ValueType::I16 => 16,
            _ => 32,
        }
    }

    /// The range of values the type holds, for checking literals.
    pub(crate) fn range(self) -> (i64, i64) {
        match self {
            ValueType::Bit => (0, 1),
            ValueType::U16 => (0, i64::from(u16::MAX)),
            ValueType::I16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
            ValueType::U32 | ValueType::U32Le => (0, i64::from(u32::MAX)),
            ValueType::I32 | ValueType::I32Le => (i64::from(i32::MIN), i64::from(i32::MAX)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::U32Le => "u32_le",
            ValueType::I32 => "i32",
            ValueType::I32Le => "i32_le",
            ValueType::Bit => "bit",
        }
    }
}

/// Where one value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub function: Function,
    /// 0-based, as on the wire.
    pub address: u16,
    pub kind: ValueType,
}

/// A measurement: a number scaled by `multiply / divide`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Measure {
    pub at: Location,
    pub multiply: f64,
    pub divide: f64,
    /// Raw values that mean "not available" (compared with both the signed and the unsigned
    /// reading of the registers, so `0xFFFF` and `-1` both work for an `i16`).
    pub not_available: Vec<i64>,
}

/// When a flag counts as set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// Any of these bits is set.
    Mask(u32),
    /// The value is one of these.
    Equals(Vec<i64>),
}

/// What a flag says about the UPS as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Meaning {
    Online,
    OnBattery,
    LowBattery,
    ReplaceBattery,
}

impl Meaning {
    fn parse(text: &str) -> Option<Meaning> {
        match text {
            "online" => Some(Meaning::Online),
            "on_battery" => Some(Meaning::OnBattery),
            "low_battery" => Some(Meaning::LowBattery),
            "replace_battery" => Some(Meaning::ReplaceBattery),
            _ => None,
        }
    }
}

/// A named status condition, shown to people when set.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flag {
    pub name: String,
    pub at: Location,
    pub condition: Condition,
    pub means: Option<Meaning>,
}

/// What an outlet-off step writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepValue {
    Literal(i64),
    /// The requested delay in whole seconds, rounded up.
    DelaySeconds,
    /// The requested delay in whole minutes, rounded up.
    DelayMinutes,
}

/// One write of the outlet-off command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    pub at: Location,
    pub value: StepValue,
    /// The largest value the UPS accepts here, when smaller than the type allows.
    pub max: Option<i64>,
    /// Bits ORed into the value over Modbus TCP and over RTU (APC's command source field).
    pub or_tcp: u32,
    pub or_rtu: u32,
    /// Write with function 16 (or 15 for coils) rather than 6 (or 5).
    pub multiple: bool,
    /// Wait this long after the write before the next request.
    pub pause: Duration,
}

/// One read request of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub function: Function,
    pub address: u16,
    pub count: u16,
}

/// A vendor register profile: where a UPS model keeps its state, its measurements, and how
/// it is told to switch its outlets off.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) runtime_s: Option<Measure>,
    pub(crate) charge_pct: Option<Measure>,
    pub(crate) load_pct: Option<Measure>,
    pub(crate) battery_voltage: Option<Measure>,
    pub(crate) flags: Vec<Flag>,
    pub(crate) outlet_off: Vec<Step>,
    /// The read requests that make one sample, computed from the locations above.
    pub(crate) reads: Vec<Block>,
}

/// Everything wrong with a profile, found in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProfileError {
    /// The file or configuration section the profile came from.
    pub origin: String,
    /// One sentence per problem, each starting with the key it is about.
    pub problems: Vec<String>,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "the UPS profile {} has {n} problem{}:",
            self.origin,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n    {p}")?;
        }
        Ok(())
    }
}

impl Profile {
    /// A profile shipped with the appliance, by name (see [`Profile::builtin_names`]).
    pub fn builtin(name: &str) -> Option<Profile> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        // The shipped files are checked by the test suite, so a failure here is a build that
        // skipped its tests; saying which file is the most useful thing left to do.
        match Profile::from_toml(text, &format!("configs/ups/{name}.toml")) {
            Ok(profile) => Some(profile),
            Err(e) => panic!("a built-in UPS profile does not parse: {e}"),
        }
    }

    /// The names [`Profile::builtin`] knows.
    pub fn builtin_names() -> &'static [&'static str] {
        BUILTIN_NAMES
    }

    /// Reads a profile. `origin` names the file or configuration section in the error, which
    /// lists every problem found.
    pub fn from_toml(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let mut problems = Vec::new();
        let table: Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                return Err(ProfileError {
                    origin: origin.to_string(),
                    problems: vec![format!("is not valid TOML: {}", e.message())],
                });
            }
        };
        let profile = parse_root(&table, &mut problems);
        match profile {
            Some(p) if problems.is_empty() => Ok(p),
            _ => Err(ProfileError {
                origin: origin.to_string(),
                problems,
            }),
        }
    }

    /// The profile's short name, such as `apc-smt`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The models it is for, for people: "APC Smart-UPS SMT/SRT/SMX".
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether [`crate::Ups::outlets_off_after`] can work with this profile.
    pub fn has_outlet_command(&self) -> bool {
        !self.outlet_off.is_empty()
    }

    /// The longest outlet-off delay the profile's registers take, if it has an outlet command.
    /// A configuration can check its delay against this at load time rather than at the
    /// moment the power is failing.
    pub fn max_outlet_off_delay(&self) -> Option<Duration> {
        self.outlet_off
            .iter()
            .filter_map(|step| {
                let (_, type_max) = step.at.kind.range();
                let max = step.max.map_or(type_max, |m| m.min(type_max));
                let max = u64::try_from(max).unwrap_or(0);
                match step.value {
                    StepValue::Literal(_) => None,
                    StepValue::DelaySeconds => Some(max),
                    StepValue::DelayMinutes => Some(max.saturating_mul(60)),
                }
            })
            .min()
            .map(Duration::from_secs)
    }

    /// How many read requests one sample takes.
    pub fn requests_per_sample(&self) -> usize {
        self.reads.len()
    }

    pub(crate) fn measures(&self) -> impl Iterator<Item = &Measure> {
        [
            &self.runtime_s,
            &self.charge_pct,
            &self.load_pct,
            &self.battery_voltage,
        ]
        .into_iter()
        .flatten()
    }
}

/// A table being read: its path for messages and the keys asked for, so that the rest can be
/// reported as unknown (usually typos).
struct Section<'a> {
    table: &'a Table,
    path: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Section<'a> {
    fn new(table: &'a Table, path: String) -> Section<'a> {
        Section {
            table,
            path,
            used: BTreeSet::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn problem(&self, problems: &mut Vec<String>, key: &str, message: String) {
        problems.push(format!("{}: {message}", self.key(key)));
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn string(&mut self, problems: &mut Vec<String>, key: &'static str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                self.problem(
                    problems,
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, problems: &mut Vec<String>, key: &'static str) -> Option<i64> {
        match self.get(key)? {
            Value::Integer(i) => Some(*i),
            other => {
                self.problem(
                    problems,
                    key,
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn number(&mut self, problems: &mut Vec<String>, key: &'static str) -> Option<f64> {
        match self.get(key)? {
            Value::Integer(i) => Some(*i as f64),
            Value::Float(x) => Some(*x),
            other => {
                self.problem(
                    problems,
                    key,
                    format!("expected a number, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integers(&mut self, problems: &mut Vec<String>, key: &'static str) -> Option<Vec<i64>> {
        let value = self.get(key)?;
        let Value::Array(items) = value else {
            self.problem(
                problems,
                key,
                format!("expected a list of integers, found {}", value.type_str()),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match item {
                Value::Integer(i) => out.push(*i),
                other => {
                    self.problem(
                        problems,
                        key,
                        format!(
                            "expected a list of integers, found {} in it",
                            other.type_str()
                        ),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Reports the keys nobody asked for.
    fn finish(self, problems: &mut Vec<String>) {
        for key in self.table.keys() {
            if !self.used.contains(key.as_str()) {
                let known: Vec<&str> = self.used.iter().copied().collect();
                problems.push(format!(
                    "{}: unknown key; known keys here are {}",
                    self.key(key),
                    known.join(", ")
                ));
            }
        }
    }
}

fn parse_root(root: &Table, problems: &mut Vec<String>) -> Option<Profile> {
    let mut s = Section::new(root, String::new());
    let name = match s.string(problems, "name") {
        None => Some("generic".to_string()),
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Some(n.to_string())
        }
        Some(n) => {
            s.problem(
                problems,
                "name",
                format!("{n:?} is not a profile name; use letters, digits, - and _"),
            );
            None
        }
    };
    let description = s.string(problems, "description").map(str::to_string);
    let gap = match s.integer(problems, "max_read_gap") {
        None => Some(0),
        Some(g) if (0..=100).contains(&g) => Some(g as u32),
        Some(g) => {
            s.problem(
                problems,
                "max_read_gap",
                format!("{g} is out of range; use 0 to 100 registers"),
            );
            None
        }
    };
    let mut measure = |key: &'static str| match s.get(key) {
        None => Some(None),
        Some(Value::Table(t)) => parse_measure(t, key.to_string(), problems).map(Some),
        Some(other) => {
            problems.push(format!(
                "{key}: expected a table such as [{key}], found {}",
                other.type_str()
            ));
            None
        }
    };
    let runtime_s = measure("runtime_s");
    let charge_pct = measure("charge_pct");
    let load_pct = measure("load_pct");
    let battery_voltage = measure("battery_voltage");

    let flags = match s.get("flag") {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => {
            let mut flags = Some(Vec::new());
            for (i, item) in items.iter().enumerate() {
                let path = format!("flag[{}]", i + 1);
                let flag = match item {
                    Value::Table(t) => parse_flag(t, path, problems),
                    other => {
                        problems.push(format!(
                            "{path}: expected a table ([[flag]]), found {}",
                            other.type_str()
                        ));
                        None
                    }
                };
                match (flag, flags.as_mut()) {
                    (Some(f), Some(list)) => list.push(f),
                    _ => flags = None,
                }
            }
            flags
        }
        Some(other) => {
            problems.push(format!(
                "flag: expected a list of [[flag]] tables, found {}",
                other.type_str()
            ));
            None
        }
    };

    let outlet_off = match s.get("outlet_off") {
        None => Some(Vec::new()),
        Some(Value::Array(items)) => {
            let mut steps = Some(Vec::new());
            for (i, item) in items.iter().enumerate() {
                let path = format!("outlet_off[{}]", i + 1);
                let step = match item {
                    Value::Table(t) => parse_step(t, path, problems),
                    other => {
                        problems.push(format!(
                            "{path}: expected a table ([[outlet_off]]), found {}",
                            other.type_str()
                        ));
                        None
                    }
                };
                match (step, steps.as_mut()) {
                    (Some(st), Some(list)) => list.push(st),
                    _ => steps = None,
                }
            }
            steps
        }
        Some(other) => {
            problems.push(format!(
                "outlet_off: expected a list of [[outlet_off]] tables, found {}",
                other.type_str()
            ));
            None
        }
    };
    s.finish(problems);

    // These two checks look at the raw tables, so that they still run when a flag or a step
    // had a problem of its own.
    let raw = |key: &str| -> Vec<&Table> {
        match root.get(key) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_table).collect(),
            _ => Vec::new(),
        }
    };
    let says_power = raw("flag").iter().any(|t| {
        matches!(
            t.get("means").and_then(Value::as_str),
            Some("online" | "on_battery")
        )
    });
    if !says_power && matches!(root.get("flag"), None | Some(Value::Array(_))) {
        problems.push(
            "flag: no flag tells whether the UPS runs on battery; add a [[flag]] with means = \"on_battery\" (or means = \"online\")".to_string(),
        );
    }
    let steps = raw("outlet_off");
    let writes_delay = steps.iter().any(|t| {
        matches!(
            t.get("value").and_then(Value::as_str),
            Some("delay_s" | "delay_min")
        )
    });
    if !steps.is_empty() && !writes_delay {
        problems.push(
            "outlet_off: no step writes the delay; give one step value = \"delay_s\" (or \"delay_min\") so that the UPS waits as long as the appliance asks".to_string(),
        );
    }
    if let Some(flags) = &flags {
        let mut seen = BTreeSet::new();
        for (i, f) in flags.iter().enumerate() {
            if !seen.insert(f.name.as_str()) {
                problems.push(format!(
                    "flag[{}].name: {:?} is used by an earlier flag; names must differ",
                    i + 1,
                    f.name
                ));
            }
        }
    }

    let name = name?;
    let description = description.unwrap_or_else(|| name.clone());
    let mut profile = Profile {
        name,
        description,
        runtime_s: runtime_s?,
        charge_pct: charge_pct?,
        load_pct: load_pct?,
        battery_voltage: battery_voltage?,
        flags: flags?,
        outlet_off: outlet_off?,
        reads: Vec::new(),
    };
    profile.reads = plan_reads(&profile, gap?);
    Some(profile)
}

/// Reads `function`, `address` and `type`, the keys every location has.
fn parse_location(
    s: &mut Section<'_>,
    problems: &mut Vec<String>,
    allowed: &[Function],
) -> Option<Location> {
    let function = match s.string(problems, "function") {
        None => Some(Function::Holding),
        Some(text) => match Function::parse(text) {
            Some(f) if allowed.contains(&f) => Some(f),
            Some(_) | None => {
                let names: Vec<String> = allowed
                    .iter()
                    .map(|f| {
                        format!(
                            "{:?}",
                            match f {
                                Function::Coil => "coil",
                                Function::Discrete => "discrete",
                                Function::Holding => "holding",
                                Function::Input => "input",
                            }
                        )
                    })
                    .collect();
                s.problem(
                    problems,
                    "function",
                    format!("{text:?} is not usable here; use {}", names.join(" or ")),
                );
                None
            }
        },
    };
    let address = match s.integer(problems, "address") {
        None => {
            if !s.has("address") {
                s.problem(
                    problems,
                    "address",
                    "is missing; give the 0-based address as sent on the wire (register 40001 is address 0)".to_string(),
                );
            }
            None
        }
        Some(a) => match u16::try_from(a) {
            Ok(a) => Some(a),
            Err(_) => {
                s.problem(
                    problems,
                    "address",
                    format!("{a} is out of range; Modbus addresses are 0 to 65535"),
                );
                None
            }
        },
    };
    let kind = match (s.string(problems, "type"), function) {
        (None, Some(f)) if f.is_bit() => Some(ValueType::Bit),
        (None, _) => Some(ValueType::U16),
        (Some(t), Some(f)) if f.is_bit() => {
            s.problem(
                problems,
                "type",
                format!("{t:?} does not apply to {f}, which hold single bits; remove it"),
            );
            None
        }
        (Some(t), _) => match ValueType::parse(t) {
            Some(k) => Some(k),
            None => {
                s.problem(
                    problems,
                    "type",
                    format!("{t:?} is not a value type; use u16, i16, u32, u32_le, i32 or i32_le"),
                );
                None
            }
        },
    };
    let (function, address, kind) = (function?, address?, kind?);
    if u32::from(address) + u32::from(kind.width()) > 0x1_0000 {
        s.problem(
            problems,
            "address",
            format!(
                "a {} at {address} runs past the last address, 65535",
                kind.name()
            ),
        );
        return None;
    }
    Some(Location {
        function,
        address,
        kind,
    })
}

fn parse_measure(table: &Table, path: String, problems: &mut Vec<String>) -> Option<Measure> {
    let mut s = Section::new(table, path);
    let at = parse_location(&mut s, problems, &[Function::Holding, Function::Input]);
    let multiply = s.number(problems, "multiply").unwrap_or(1.0);
    let divide = s.number(problems, "divide").unwrap_or(1.0);
    let mut ok = true;
    for (key, v) in [("multiply", multiply), ("divide", divide)] {
        if !(v.is_finite() && v != 0.0) {
            s.problem(
                problems,
                key,
                format!("{v} cannot scale a value; use a number other than 0"),
            );
            ok = false;
        }
    }
    // A list with a wrong item is already a recorded problem; an empty one stands in.
    let not_available = s.integers(problems, "not_available").unwrap_or_default();
    s.finish(problems);
    if !ok {
        return None;
    }
    Some(Measure {
        at: at?,
        multiply,
        divide,
        not_available,
    })
}

fn parse_flag(table: &Table, path: String, problems: &mut Vec<String>) -> Option<Flag> {
    let mut s = Section::new(table, path);
    let name = match s.string(problems, "name") {
        Some(n) if !n.is_empty() => Some(n.to_string()),
        // Not a string: already reported.
        None if s.has("name") => None,
        Some(_) | None => {
            s.problem(
                problems,
                "name",
                "is missing or empty; name the condition for people, such as \"on_battery\"".into(),
            );
            None
        }
    };
    let at = parse_location(
        &mut s,
        problems,
        &[
            Function::Holding,
            Function::Input,
            Function::Coil,
            Function::Discrete,
        ],
    );
    let bit = s.integer(problems, "bit");
    let mask = s.integer(problems, "mask");
    let equals = s.integers(problems, "equals");
    let means = match s.string(problems, "means") {
        None => Some(None),
        Some(m) => match Meaning::parse(m) {
            Some(m) => Some(Some(m)),
            None => {
                s.problem(
                    problems,
                    "means",
                    format!(
                        "{m:?} is not a meaning; use \"online\", \"on_battery\", \"low_battery\" or \"replace_battery\""
                    ),
                );
                None
            }
        },
    };
    let given = [s.has("bit"), s.has("mask"), s.has("equals")]
        .iter()
        .filter(|g| **g)
        .count();
    let condition = match at {
        None => None,
        Some(at) if at.kind == ValueType::Bit => match (given, &equals) {
            (0, _) => Some(Condition::Equals(vec![1])),
            (1, Some(list)) if list.iter().all(|v| *v == 0 || *v == 1) => {
                Some(Condition::Equals(list.clone()))
            }
            _ => {
                s.problem(
                    problems,
                    "bit",
                    format!(
                        "{} hold single bits: the flag is set when the bit is 1; only equals = [0] may turn that round",
                        at.function
                    ),
                );
                None
            }
        },
        Some(_) if given != 1 => {
            s.problem(
                problems,
                "bit",
                "give exactly one of bit = <n>, mask = <bits> or equals = [<values>]".into(),
            );
            None
        }
        Some(at) => {
            let width = at.kind.bits();
            if let Some(b) = bit {
                if (0..i64::from(width)).contains(&b) {
                    Some(Condition::Mask(1 << b))
                } else {
                    s.problem(
                        problems,
                        "bit",
                        format!(
                            "{b} does not fit a {}; bits are numbered 0 (least significant) to {}",
                            at.kind.name(),
                            width - 1
                        ),
                    );
                    None
                }
            } else if let Some(m) = mask {
                let limit = if width == 32 {
                    i64::from(u32::MAX)
                } else {
                    i64::from(u16::MAX)
                };
                if m > 0 && m <= limit {
                    Some(Condition::Mask(m as u32))
                } else {
                    s.problem(
                        problems,
                        "mask",
                        format!(
                            "{m:#x} does not fit a {}; use 0x1 to {limit:#x}",
                            at.kind.name()
                        ),
                    );
                    None
                }
            } else {
                match equals {
                    Some(list) if !list.is_empty() => Some(Condition::Equals(list)),
                    Some(_) => {
                        s.problem(
                            problems,
                            "equals",
                            "is empty; list the values that set the flag".into(),
                        );
                        None
                    }
                    None => None,
                }
            }
        }
    };
    s.finish(problems);
    Some(Flag {
        name: name?,
        at: at?,
        condition: condition?,
        means: means?,
    })
}

fn parse_step(table: &Table, path: String, problems: &mut Vec<String>) -> Option<Step> {
    let mut s = Section::new(table, path);
    let at = parse_location(&mut s, problems, &[Function::Holding, Function::Coil]);
    let value = match s.get("value") {
        Some(Value::Integer(i)) => Some(StepValue::Literal(*i)),
        Some(Value::String(v)) if v == "delay_s" => Some(StepValue::DelaySeconds),
        Some(Value::String(v)) if v == "delay_min" => Some(StepValue::DelayMinutes),
        Some(other) => {
            s.problem(
                problems,
                "value",
                format!(
                    "{other} is not a value to write; use an integer, \"delay_s\" (the delay in seconds) or \"delay_min\" (in minutes)"
                ),
            );
            None
        }
        None => {
            s.problem(
                problems,
                "value",
                "is missing; use an integer, \"delay_s\" or \"delay_min\"".into(),
            );
            None
        }
    };
    let max = s.integer(problems, "max");
    let or_tcp = s.integer(problems, "or_tcp").unwrap_or(0);
    let or_rtu = s.integer(problems, "or_rtu").unwrap_or(0);
    let write = s.string(problems, "write");
    let pause_ms = s.integer(problems, "pause_ms").unwrap_or(0);

    // The cross-checks, once every key is read. `ok` turns false on any of them; the
    // problems themselves are already recorded.
    let mut ok = true;
    let mut problem = |key: &str, message: String| {
        s.problem(problems, key, message);
        ok = false;
    };
    let multiple = match (write, at) {
        (Some("single"), Some(at)) if at.kind.width() > 1 => {
            problem(
                "write",
                format!(
                    "a {} spans two registers and cannot be written with function 6; use write = \"multiple\"",
                    at.kind.name()
                ),
            );
            false
        }
        (Some("single"), _) => false,
        (Some("multiple"), _) => true,
        (None, Some(at)) => at.kind.width() > 1,
        (None, None) => false,
        (Some(other), _) => {
            problem(
                "write",
                format!(
                    "{other:?} is not a write kind; use \"single\" (function 6 or 5) or \"multiple\" (16 or 15)"
                ),
            );
            false
        }
    };
    if let Some(at) = at {
        let (lo, hi) = at.kind.range();
        if let Some(StepValue::Literal(v)) = value
            && !(lo..=hi).contains(&v)
        {
            problem(
                "value",
                format!("{v} does not fit a {}; use {lo} to {hi}", at.kind.name()),
            );
        }
        for (key, bits) in [("or_tcp", or_tcp), ("or_rtu", or_rtu)] {
            if !(0..=hi).contains(&bits) {
                problem(key, format!("{bits:#x} does not fit a {}", at.kind.name()));
            }
        }
        if let Some(m) = max
            && !(0..=hi).contains(&m)
        {
            problem(
                "max",
                format!(
                    "{m} is out of range for a {}; use 0 to {hi}",
                    at.kind.name()
                ),
            );
        }
    }
    if max.is_some() && matches!(value, Some(StepValue::Literal(_))) {
        problem(
            "max",
            "only limits \"delay_s\" or \"delay_min\"; remove it from a literal value".into(),
        );
    }
    if !(0..=10_000).contains(&pause_ms) {
        problem(
            "pause_ms",
            format!("{pause_ms} is out of range; use 0 to 10000 ms"),
        );
    }
    s.finish(problems);
    if !ok {
        return None;
    }
    Some(Step {
        at: at?,
        value: value?,
        max,
        or_tcp: or_tcp as u32,
        or_rtu: or_rtu as u32,
        multiple,
        pause: Duration::from_millis(pause_ms as u64),
    })
}

/// Groups every location a sample needs into as few read requests as the gap allows, within
/// Modbus's per-request limits.
fn plan_reads(profile: &Profile, gap: u32) -> Vec<Block> {
    let mut spans: Vec<(Function, u32, u32)> = profile
        .measures()
        .map(|m| m.at)
        .chain(profile.flags.iter().map(|f| f.at))
        .map(|at| {
            let start = u32::from(at.address);
            (at.function, start, start + u32::from(at.kind.width()))
        })
        .collect();
    spans.sort_unstable();
    let mut blocks: Vec<(Function, u32, u32)> = Vec::new();
    for (function, start, end) in spans {
        let limit = if function.is_bit() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        };
        match blocks.last_mut() {
            Some((f, b_start, b_end))
                if *f == function
                    && start <= *b_end + gap
                    && end.max(*b_end) - *b_start <= limit =>
            {
                *b_end = end.max(*b_end);
            }
            _ => blocks.push((function, start, end)),
        }
    }
    blocks
        .into_iter()
        .map(|(function, start, end)| Block {
            function,
            address: start as u16,
            count: (end - start) as u16,
        })
        .collect()
}
