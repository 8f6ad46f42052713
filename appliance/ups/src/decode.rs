//! Turning register values into a [`Reading`]: a pure function of the profile and the values,
//! so every vendor's decoding is tested without a network.

use std::collections::BTreeMap;
use std::fmt;

use crate::profile::{Condition, Function, Location, Meaning, Measure, Profile, ValueType};

/// What the UPS says about the power, in the terms the appliance acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsState {
    /// On mains power.
    Online,
    /// On battery, with charge left.
    OnBattery,
    /// On battery, and the UPS says the battery is nearly spent.
    LowBattery,
    /// The UPS could not be read; `Reading::error` says why.
    CommunicationLost,
}

impl fmt::Display for UpsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpsState::Online => "online",
            UpsState::OnBattery => "on battery",
            UpsState::LowBattery => "on battery, battery low",
            UpsState::CommunicationLost => "communication lost",
        })
    }
}

/// One sample of the UPS.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub state: UpsState,
    /// Estimated runtime left on battery, in seconds.
    pub runtime_s: Option<u32>,
    pub charge_pct: Option<f32>,
    /// Output load, in percent of the rated load.
    pub load_pct: Option<f32>,
    pub battery_voltage: Option<f32>,
    /// The UPS asks for a new battery (false when the profile cannot tell).
    pub replace_battery: bool,
    /// The profile's flags that are set, such as `["online", "input_bad"]`, for people.
    pub flags: Vec<String>,
    /// Why the UPS could not be read, when `state` is `CommunicationLost`.
    pub error: Option<String>,
}

impl Reading {
    /// The reading of a UPS that could not be read.
    pub fn communication_lost(error: impl Into<String>) -> Reading {
        Reading {
            state: UpsState::CommunicationLost,
            runtime_s: None,
            charge_pct: None,
            load_pct: None,
            battery_voltage: None,
            replace_battery: false,
            flags: Vec::new(),
            error: Some(error.into()),
        }
    }
}

/// The values one sample read, by data table and address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawValues {
    registers: BTreeMap<(Function, u16), u16>,
    bits: BTreeMap<(Function, u16), bool>,
}

impl RawValues {
    /// No values yet.
    pub fn new() -> RawValues {
        RawValues::default()
    }

    /// Records registers read from `address` on (holding or input registers).
    pub fn set_registers(&mut self, function: Function, address: u16, values: &[u16]) {
        for (a, v) in (address..=u16::MAX).zip(values) {
            self.registers.insert((function, a), *v);
        }
    }

    /// Records bits read from `address` on (coils or discrete inputs).
    pub fn set_bits(&mut self, function: Function, address: u16, values: &[bool]) {
        for (a, v) in (address..=u16::MAX).zip(values) {
            self.bits.insert((function, a), *v);
        }
    }

    /// The value at a location, signed or unsigned as its type says, and its raw bits; `None`
    /// when a register it needs was not read.
    fn value(&self, at: Location) -> Option<(i64, u32)> {
        let reg = |offset: u16| {
            self.registers
                .get(&(at.function, at.address.checked_add(offset)?))
                .copied()
        };
        let pair = |first: u16, second: u16| (u32::from(first) << 16) | u32::from(second);
        let bits = match at.kind {
            ValueType::Bit => {
                let bit = *self.bits.get(&(at.function, at.address))?;
                return Some((i64::from(bit), u32::from(bit)));
            }
            ValueType::U16 | ValueType::I16 => u32::from(reg(0)?),
            ValueType::U32 | ValueType::I32 => pair(reg(0)?, reg(1)?),
            ValueType::U32Le | ValueType::I32Le => pair(reg(1)?, reg(0)?),
        };
        let value = match at.kind {
            ValueType::I16 => i64::from(bits as u16 as i16),
            ValueType::I32 | ValueType::I32Le => i64::from(bits as i32),
            _ => i64::from(bits),
        };
        Some((value, bits))
    }

    fn measure(&self, m: &Measure) -> Option<f64> {
        let (value, bits) = self.value(m.at)?;
        if m.not_available.contains(&value) || m.not_available.contains(&i64::from(bits)) {
            return None;
        }
        Some(value as f64 * m.multiply / m.divide)
    }
}

/// Decodes one sample. Values the profile needs but `values` lacks count as not available
/// (a measurement is `None`, a flag is not set).
pub fn decode(profile: &Profile, values: &RawValues) -> Reading {
    let mut flags: Vec<String> = Vec::new();
    let (mut online, mut on_battery, mut low, mut replace) = (false, false, false, false);
    let (mut knows_online, mut knows_on_battery) = (false, false);
    for flag in &profile.flags {
        match flag.means {
            Some(Meaning::Online) => knows_online = true,
            Some(Meaning::OnBattery) => knows_on_battery = true,
            _ => {}
        }
        let Some((value, bits)) = values.value(flag.at) else {
            continue;
        };
        let set = match &flag.condition {
            Condition::Mask(mask) => bits & mask != 0,
            Condition::Equals(list) => list.contains(&value),
        };
        if !set {
            continue;
        }
        if !flags.contains(&flag.name) {
            flags.push(flag.name.clone());
        }
        match flag.means {
            Some(Meaning::Online) => online = true,
            Some(Meaning::OnBattery) => on_battery = true,
            Some(Meaning::LowBattery) => low = true,
            Some(Meaning::ReplaceBattery) => replace = true,
            None => {}
        }
    }
    // A profile that only knows "online" (some cards only report utility present) runs on
    // battery whenever that flag is clear.
    let on_battery = if knows_on_battery {
        on_battery
    } else {
        knows_online && !online
    };
    // Low battery counts only on battery, as NUT's upsmon treats OB+LB: a UPS back on mains
    // with a drained battery is charging, not about to drop the load.
    let state = match (on_battery, low) {
        (true, true) => UpsState::LowBattery,
        (true, false) => UpsState::OnBattery,
        (false, _) => UpsState::Online,
    };
    let number = |m: &Option<Measure>| m.as_ref().and_then(|m| values.measure(m));
    Reading {
        state,
        runtime_s: number(&profile.runtime_s)
            .map(|s| s.round().clamp(0.0, f64::from(u32::MAX)) as u32),
        charge_pct: number(&profile.charge_pct).map(|x| x as f32),
        load_pct: number(&profile.load_pct).map(|x| x as f32),
        battery_voltage: number(&profile.battery_voltage).map(|x| x as f32),
        replace_battery: replace,
        flags,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apc() -> Profile {
        Profile::builtin("apc-smt").expect("apc-smt is built in")
    }

    /// APC registers as an SMT reports them on mains with a full battery.
    fn apc_online() -> RawValues {
        let mut v = RawValues::new();
        let mut status = [0u16; 25];
        status[1] = 1 << 1; // UPSStatus_BF low word: online.
        v.set_registers(Function::Holding, 0, &status);
        let mut dynamic = [0u16; 9];
        dynamic[0] = 0; // RunTimeRemaining high word.
        dynamic[1] = 3600;
        dynamic[2] = 100 * 512; // 100 %.
        dynamic[3] = (27.3 * 32.0) as u16;
        dynamic[8] = 20 * 256; // 20 % load.
        v.set_registers(Function::Holding, 128, &dynamic);
        v
    }

    #[test]
    fn apc_online_decodes() {
        let r = decode(&apc(), &apc_online());
        assert_eq!(r.state, UpsState::Online);
        assert_eq!(r.runtime_s, Some(3600));
        assert_eq!(r.charge_pct, Some(100.0));
        assert_eq!(r.load_pct, Some(20.0));
        assert_eq!(r.battery_voltage, Some(27.28125));
        assert_eq!(r.flags, vec!["online"]);
        assert!(!r.replace_battery);
        assert_eq!(r.error, None);
    }

    #[test]
    fn apc_status_bits_in_the_high_word_decode() {
        // Overload is bit 21: the high register of the big-endian pair.
        let mut v = apc_online();
        v.set_registers(Function::Holding, 0, &[1 << 5, 1 << 1]);
        let r = decode(&apc(), &v);
        assert_eq!(r.flags, vec!["online", "overload"]);
    }

    #[test]
    fn apc_runtime_above_65535_seconds_uses_the_high_word() {
        let mut v = apc_online();
        v.set_registers(Function::Holding, 128, &[1, 0x1170]);
        assert_eq!(decode(&apc(), &v).runtime_s, Some(70_000));
    }

    #[test]
    fn apc_negative_battery_voltage_is_signed() {
        let mut v = apc_online();
        v.set_registers(Function::Holding, 131, &[(-64i16) as u16]);
        assert_eq!(decode(&apc(), &v).battery_voltage, Some(-2.0));
    }

    #[test]
    fn shutdown_imminent_on_mains_is_not_low_battery() {
        let mut v = apc_online();
        v.set_registers(Function::Holding, 18, &[1 << 1]);
        let r = decode(&apc(), &v);
        assert_eq!(r.state, UpsState::Online);
        assert!(r.flags.contains(&"shutdown_imminent".to_string()));
    }

    #[test]
    fn missing_values_decode_to_none() {
        let r = decode(&apc(), &RawValues::new());
        assert_eq!(r.state, UpsState::Online);
        assert_eq!(r.runtime_s, None);
        assert_eq!(r.charge_pct, None);
        assert!(r.flags.is_empty());
    }

    fn tripplite(output_source: u16, battery_status: u16, condition: u16) -> RawValues {
        let mut v = RawValues::new();
        // 0x041E condition, 0x041F status, 0x0420 charge, 0x0421 seconds on battery,
        // 0x0422 minutes left, 0x0423, 0x0424 volts x10, 0x0425, 0x0426, 0x0427 level.
        v.set_registers(
            Function::Input,
            0x041E,
            &[
                condition,
                battery_status,
                3,
                120,
                12,
                0xFFFF,
                545,
                0,
                30,
                80,
            ],
        );
        v.set_registers(
            Function::Input,
            0x0442,
            &[output_source, 600, 1, 2300, 20, 500, 0xFFFF],
        );
        v
    }

    #[test]
    fn tripplite_on_battery_decodes_enums_and_not_available() {
        let p = Profile::builtin("tripplite-modbuscard").expect("built in");
        let r = decode(&p, &tripplite(1, 0, 1));
        assert_eq!(r.state, UpsState::OnBattery);
        assert_eq!(r.runtime_s, Some(12 * 60));
        assert_eq!(r.charge_pct, Some(80.0));
        assert_eq!(r.battery_voltage, Some(54.5));
        assert_eq!(r.load_pct, None, "0xFFFF means the UPS does not report it");
        assert_eq!(r.flags, vec!["on_battery", "battery_weak", "discharging"]);

        let r = decode(&p, &tripplite(1, 2, 2));
        assert_eq!(r.state, UpsState::LowBattery);
        assert!(r.replace_battery);

        let r = decode(&p, &tripplite(4, 0, 0));
        assert_eq!(r.state, UpsState::Online);
    }

    #[test]
    fn online_only_profile_is_on_battery_when_the_flag_clears() {
        let p = Profile::from_toml(
            r#"
            [[flag]]
            name = "utility_present"
            function = "discrete"
            address = 10
            means = "online"
            "#,
            "test",
        )
        .expect("parses");
        let mut v = RawValues::new();
        v.set_bits(Function::Discrete, 10, &[true]);
        assert_eq!(decode(&p, &v).state, UpsState::Online);
        v.set_bits(Function::Discrete, 10, &[false]);
        assert_eq!(decode(&p, &v).state, UpsState::OnBattery);
    }

    #[test]
    fn little_endian_words_and_scaling() {
        let p = Profile::from_toml(
            r#"
            [runtime_s]
            function = "input"
            address = 4
            type = "u32_le"
            [charge_pct]
            function = "input"
            address = 6
            type = "i16"
            multiply = 0.5
            not_available = [-1]
            [[flag]]
            name = "on_battery"
            function = "input"
            address = 7
            mask = 0x0300
            means = "on_battery"
            "#,
            "test",
        )
        .expect("parses");
        let mut v = RawValues::new();
        v.set_registers(Function::Input, 4, &[0x1170, 1, 150, 0x0200]);
        let r = decode(&p, &v);
        assert_eq!(r.runtime_s, Some(70_000));
        assert_eq!(r.charge_pct, Some(75.0));
        assert_eq!(r.state, UpsState::OnBattery);
        v.set_registers(Function::Input, 6, &[0xFFFF]);
        assert_eq!(decode(&p, &v).charge_pct, None);
    }

    #[test]
    fn reading_serializes_state_in_snake_case() {
        let r = Reading::communication_lost("no answer");
        let json = serde_json_like(&r);
        assert!(json.contains("communication_lost"), "{json}");
    }

    /// The crate has no JSON dependency; TOML shows the serde names just as well.
    fn serde_json_like(r: &Reading) -> String {
        toml::to_string(r).expect("serializes")
    }
}
