//! The UPS crate against a Modbus TCP server on loopback: decoding, timeouts and reconnects,
//! the outlet-off command, and profile parsing.

#[path = "ups/fake.rs"]
mod fake;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake::{Apc, FakeUps, Write};
use tokio_modbus::ExceptionCode;
use ups::{Profile, Settings, Transport, Ups, UpsError, UpsState};

const TIMEOUT: Duration = Duration::from_millis(300);

fn apc_at(address: String) -> Ups {
    Ups::new(Settings {
        transport: Transport::Tcp { address },
        unit_id: 1,
        profile: Profile::builtin("apc-smt").expect("apc-smt is built in"),
        timeout: TIMEOUT,
    })
}

async fn apc_online() -> (FakeUps, Ups) {
    let fake = FakeUps::start().await;
    Apc(&fake).online();
    let ups = apc_at(fake.address.to_string());
    (fake, ups)
}

#[tokio::test]
async fn online_decodes_in_two_requests() {
    let (fake, mut ups) = apc_online().await;
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::Online, "{r:?}");
    assert_eq!(r.runtime_s, Some(3600));
    assert_eq!(r.charge_pct, Some(100.0));
    assert_eq!(r.load_pct, Some(20.0));
    assert_eq!(r.battery_voltage, Some(27.0));
    assert_eq!(r.flags, vec!["online"]);
    assert!(!r.replace_battery);
    assert_eq!(r.error, None);
    assert_eq!(
        fake.requests(),
        2,
        "registers 0.. and 128.. in one request each"
    );
    assert_eq!(fake.unit_ids(), vec![1, 1]);
}

#[tokio::test]
async fn on_battery_with_runtime() {
    let (fake, mut ups) = apc_online().await;
    let apc = Apc(&fake);
    apc.status(1 << 2 | 1 << 6, 0, 0);
    apc.measures(900, 64.0, 25.5, 31.0);
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::OnBattery);
    assert_eq!(r.runtime_s, Some(900));
    assert_eq!(r.flags, vec!["on_battery", "input_bad"]);
}

#[tokio::test]
async fn low_battery_is_shutdown_imminent_on_battery() {
    let (fake, mut ups) = apc_online().await;
    let apc = Apc(&fake);
    apc.status(1 << 2, 1 << 1, 0);
    apc.measures(120, 9.0, 23.0, 31.0);
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::LowBattery);
    assert_eq!(r.runtime_s, Some(120));
    assert_eq!(r.flags, vec!["on_battery", "shutdown_imminent"]);
}

#[tokio::test]
async fn charge_load_and_voltage_are_scaled() {
    let (fake, mut ups) = apc_online().await;
    Apc(&fake).measures(70_000, 37.5, 27.28125, 42.25);
    let r = ups.read().await;
    assert_eq!(r.runtime_s, Some(70_000), "a u32 across two registers");
    assert_eq!(r.charge_pct, Some(37.5));
    assert_eq!(r.load_pct, Some(42.25));
    assert_eq!(r.battery_voltage, Some(27.28125));
}

// APC's BatterySystemError_BF is register 19, where NeedsReplacement is bit 2. NUT's
// apc_modbus.c (0.13) decodes "RB" from register 18 bit 1 instead, which is
// SimpleSignalingStatus ShutdownImminent: there, every low battery also reads as "replace
// battery", and a worn battery never does. The profile follows the register map; this test
// keeps the two apart.
#[tokio::test]
async fn replace_battery_is_register_19_not_shutdown_imminent() {
    let (fake, mut ups) = apc_online().await;
    let apc = Apc(&fake);
    apc.status(1 << 2, 1 << 1, 0);
    let r = ups.read().await;
    assert!(!r.replace_battery, "shutdown imminent alone: {r:?}");
    apc.status(1 << 1, 0, 1 << 2);
    let r = ups.read().await;
    assert!(r.replace_battery, "{r:?}");
    assert_eq!(r.state, UpsState::Online);
    assert_eq!(r.flags, vec!["online", "replace_battery"]);
}

#[tokio::test]
async fn a_silent_card_is_communication_lost_within_the_timeout_then_reconnects() {
    let (fake, mut ups) = apc_online().await;
    assert_eq!(ups.read().await.state, UpsState::Online);
    fake.silence(true);
    let started = Instant::now();
    let r = ups.read().await;
    let took = started.elapsed();
    assert_eq!(r.state, UpsState::CommunicationLost);
    let error = r.error.expect("an error sentence");
    assert!(error.contains("did not answer"), "{error}");
    assert!(error.contains(&fake.address.to_string()), "{error}");
    assert!(
        took >= TIMEOUT && took < TIMEOUT * 2 + Duration::from_millis(300),
        "took {took:?}"
    );
    assert_eq!(r.runtime_s, None);

    fake.silence(false);
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::Online, "{r:?}");
    assert_eq!(fake.connections(), 2, "the hung connection was replaced");
}

#[tokio::test]
async fn a_late_answer_is_not_taken_for_the_next_one() {
    let (fake, mut ups) = apc_online().await;
    fake.answer_late(Some(TIMEOUT * 2));
    assert_eq!(ups.read().await.state, UpsState::CommunicationLost);
    // The old answer (online, 3600 s) may still be on its way; the new state must win.
    fake.answer_late(None);
    let apc = Apc(&fake);
    apc.status(1 << 2, 0, 0);
    apc.measures(1234, 50.0, 25.0, 10.0);
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::OnBattery, "{r:?}");
    assert_eq!(r.runtime_s, Some(1234));
}

#[tokio::test]
async fn a_card_that_rebooted_is_reconnected_within_the_same_reading() {
    let (mut fake, mut ups) = apc_online().await;
    assert_eq!(ups.read().await.state, UpsState::Online);
    fake.restart().await;
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::Online, "{r:?}");
    assert_eq!(fake.connections(), 2);

    fake.restart().await;
    ups.outlets_off_after(Duration::from_secs(30))
        .await
        .expect("sent on a fresh connection");
    assert_eq!(fake.writes().len(), 2);
    assert_eq!(fake.connections(), 3);
}

#[tokio::test]
async fn a_ups_hanging_up_is_reported_as_such() {
    // Not a Modbus server: it takes the request and closes the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 12];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut request).await;
        }
    });
    let r = apc_at(address).read().await;
    assert_eq!(r.state, UpsState::CommunicationLost);
    let error = r.error.expect("an error sentence");
    assert!(error.contains("the UPS closed the connection"), "{error}");
}

#[test]
fn ups_futures_can_be_spawned() {
    fn send<T: Send>(_: &T) {}
    let mut ups = apc_at("127.0.0.1:1".into());
    send(&ups.read());
    send(&ups.outlets_off_after(Duration::from_secs(1)));
    send(&ups);
}

#[tokio::test]
async fn a_modbus_exception_keeps_the_connection() {
    let (fake, mut ups) = apc_online().await;
    fake.refuse(Some(ExceptionCode::IllegalDataAddress));
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::CommunicationLost);
    let error = r.error.expect("an error sentence");
    assert!(error.contains("refused"), "{error}");
    assert!(error.contains("\"apc-smt\""), "{error}");
    fake.refuse(None);
    assert_eq!(ups.read().await.state, UpsState::Online);
    assert_eq!(fake.connections(), 1, "an exception is a complete answer");
}

#[tokio::test]
async fn a_ups_that_is_down_is_communication_lost() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    drop(listener);
    let mut ups = apc_at(address.clone());
    let started = Instant::now();
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::CommunicationLost);
    let error = r.error.expect("an error sentence");
    assert!(error.contains("cannot connect"), "{error}");
    assert!(error.contains(&address), "{error}");
    assert!(started.elapsed() < TIMEOUT * 2, "refused at once");
}

#[tokio::test]
async fn a_missing_serial_port_names_the_fix() {
    let mut ups = Ups::new(Settings {
        transport: Transport::Rtu {
            device: PathBuf::from("/dev/outpost-test-no-such-tty"),
            baud: 9600,
        },
        unit_id: 1,
        profile: Profile::builtin("apc-smt").expect("built in"),
        timeout: TIMEOUT,
    });
    assert_eq!(
        ups.describe(),
        "APC Smart-UPS SMT/SRT/SMX on /dev/outpost-test-no-such-tty at 9600 baud unit 1"
    );
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::CommunicationLost);
    let error = r.error.expect("an error sentence");
    assert!(
        error.starts_with("cannot open the serial port /dev/outpost-test-no-such-tty"),
        "{error}"
    );
    assert!(
        error.contains("check the cable and the device path"),
        "{error}"
    );
}

#[tokio::test]
async fn apc_outlets_off_writes_the_delay_then_the_command() {
    let (fake, mut ups) = apc_online().await;
    ups.outlets_off_after(Duration::from_secs(60))
        .await
        .expect("the command is accepted");
    // 1029: the main outlet group's turn-off countdown, in seconds. 1538..1539:
    // OutletCommand_BF, big-endian u32 = OutputShutdown (bit 3) | UseOffDelay (bit 7) |
    // MainOutletGroup (bit 8), with no source bits, as NUT's driver sends it.
    assert_eq!(
        fake.writes(),
        vec![
            Write {
                function: 16,
                address: 1029,
                values: vec![60],
            },
            Write {
                function: 16,
                address: 1538,
                values: vec![0x0000, 0x0188],
            },
        ]
    );
    // The connection stays usable for readings while the UPS counts down.
    assert_eq!(ups.read().await.state, UpsState::Online);
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn a_part_second_delay_is_rounded_up() {
    let (fake, mut ups) = apc_online().await;
    ups.outlets_off_after(Duration::from_millis(90_200))
        .await
        .expect("accepted");
    assert_eq!(fake.writes()[0].values, vec![91]);
}

#[tokio::test]
async fn tripplite_outlets_off_is_one_single_register_write_within_its_range() {
    let fake = FakeUps::start().await;
    let mut ups = Ups::new(Settings {
        transport: Transport::Tcp {
            address: fake.address.to_string(),
        },
        unit_id: 1,
        profile: Profile::builtin("tripplite-modbuscard").expect("built in"),
        timeout: TIMEOUT,
    });
    let e = ups
        .outlets_off_after(Duration::from_secs(1000))
        .await
        .expect_err("999 s is the most the card takes");
    assert!(
        matches!(e, UpsError::DelayTooLong { max_s: 999, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("1000 s"), "{e}");
    assert_eq!(fake.requests(), 0, "nothing was sent");

    ups.outlets_off_after(Duration::from_secs(120))
        .await
        .expect("accepted");
    assert_eq!(
        fake.writes(),
        vec![Write {
            function: 6,
            address: 0x0300,
            values: vec![120],
        }]
    );
}

#[tokio::test]
async fn tripplite_reads_input_registers() {
    let fake = FakeUps::start().await;
    fake.set_input(0x041E, &[0, 0, 3, 60, 25, 0xFFFF, 545, 0, 30, 90]);
    fake.set_input(0x0442, &[1, 600, 1, 2300, 20, 500, 35]);
    let mut ups = Ups::new(Settings {
        transport: Transport::Tcp {
            address: fake.address.to_string(),
        },
        unit_id: 1,
        profile: Profile::builtin("tripplite-modbuscard").expect("built in"),
        timeout: TIMEOUT,
    });
    let r = ups.read().await;
    assert_eq!(r.state, UpsState::OnBattery, "{r:?}");
    assert_eq!(r.runtime_s, Some(25 * 60));
    assert_eq!(r.charge_pct, Some(90.0));
    assert_eq!(r.load_pct, Some(35.0));
    assert_eq!(r.battery_voltage, Some(54.5));
    assert_eq!(fake.requests(), 2);
}

#[tokio::test]
async fn a_profile_without_an_outlet_command_is_an_error() {
    let fake = FakeUps::start().await;
    let profile = Profile::from_toml(
        r#"
        [[flag]]
        name = "on_battery"
        address = 0
        bit = 0
        means = "on_battery"
        "#,
        "test",
    )
    .expect("parses");
    assert!(!profile.has_outlet_command());
    assert_eq!(profile.max_outlet_off_delay(), None);
    let mut ups = Ups::new(Settings {
        transport: Transport::Tcp {
            address: fake.address.to_string(),
        },
        unit_id: 1,
        profile,
        timeout: TIMEOUT,
    });
    let e = ups
        .outlets_off_after(Duration::from_secs(60))
        .await
        .expect_err("no command");
    assert!(matches!(e, UpsError::NoOutletCommand { .. }), "{e}");
    assert!(e.to_string().contains("[[outlet_off]]"), "{e}");
    assert_eq!(fake.connections(), 0);
}

#[test]
fn profile_errors_list_every_problem() {
    let e = Profile::from_toml(
        r#"
        name = "my ups"
        max_read_gap = 500
        [charge_pct]
        function = "holding"
        adress = 3
        divide = 0
        [[flag]]
        name = "on_battery"
        function = "register"
        address = 1
        bit = 0
        [[flag]]
        name = "overload"
        address = 2
        bit = 16
        [[flag]]
        name = "alarm"
        address = 3
        type = "u32"
        bit = 3
        mask = 0x8
        [[outlet_off]]
        address = 1538
        type = "u32"
        value = 0x188
        write = "single"
        "#,
        "site.toml: [ups.registers]",
    )
    .expect_err("broken");
    assert_eq!(e.origin, "site.toml: [ups.registers]");
    let expected = [
        "name: \"my ups\" is not a profile name",
        "max_read_gap: 500 is out of range",
        "charge_pct.address: is missing",
        "charge_pct.divide: 0 cannot scale a value",
        "charge_pct.adress: unknown key",
        "flag[1].function: \"register\" is not usable here",
        "flag[2].bit: 16 does not fit a u16",
        "flag[3].bit: give exactly one of",
        "outlet_off[1].write: a u32 spans two registers",
        "outlet_off: no step writes the delay",
        "flag: no flag tells whether the UPS runs on battery",
    ];
    for want in expected {
        assert!(
            e.problems.iter().any(|p| p.starts_with(want)),
            "missing {want:?} in {:#?}",
            e.problems
        );
    }
    assert_eq!(e.problems.len(), expected.len(), "{:#?}", e.problems);
    let text = e.to_string();
    assert!(
        text.starts_with("the UPS profile site.toml: [ups.registers] has 11 problems:\n    "),
        "{text}"
    );
}

#[test]
fn a_toml_syntax_error_names_the_origin() {
    let e = Profile::from_toml("name = ", "broken.toml").expect_err("not TOML");
    assert_eq!(e.problems.len(), 1);
    assert!(e.to_string().contains("broken.toml"), "{e}");
    assert!(e.problems[0].starts_with("is not valid TOML"), "{e}");
}

#[test]
fn every_builtin_profile_parses() {
    assert_eq!(
        Profile::builtin_names(),
        &["apc-smt", "tripplite-modbuscard"]
    );
    for name in Profile::builtin_names() {
        let p = Profile::builtin(name).expect("listed names are built in");
        assert_eq!(p.name(), *name);
        assert!(p.has_outlet_command(), "{name}");
        assert_eq!(p.requests_per_sample(), 2, "{name}");
    }
    assert!(
        Profile::builtin("generic").is_none(),
        "generic comes from the config"
    );
    assert_eq!(
        Profile::builtin("apc-smt")
            .expect("built in")
            .max_outlet_off_delay(),
        Some(Duration::from_secs(32_767))
    );
    assert_eq!(
        Profile::builtin("tripplite-modbuscard")
            .expect("built in")
            .max_outlet_off_delay(),
        Some(Duration::from_secs(999))
    );
}

/// The configuration crate passes `[ups.registers]` on as `toml::to_string` of that table, so
/// a generic profile must survive the round trip (arrays of tables included).
#[test]
fn a_generic_profile_survives_the_configuration_round_trip() {
    let config: toml::Table = r#"
        [ups]
        profile = "generic"
        [ups.registers]
        description = "Some UPS"
        max_read_gap = 4
        [ups.registers.runtime_s]
        function = "input"
        address = 10
        multiply = 60
        [[ups.registers.flag]]
        name = "on_battery"
        function = "discrete"
        address = 3
        means = "on_battery"
        [[ups.registers.outlet_off]]
        address = 100
        value = "delay_min"
        "#
    .parse()
    .expect("TOML");
    let registers = config["ups"]["registers"].as_table().expect("a table");
    let text = toml::to_string(registers).expect("serializes");
    let p = Profile::from_toml(&text, "test").expect("parses");
    assert_eq!(p.name(), "generic");
    assert_eq!(p.description(), "Some UPS");
    assert_eq!(p.requests_per_sample(), 2);
    assert_eq!(
        p.max_outlet_off_delay(),
        Some(Duration::from_secs(65_535 * 60))
    );
}

#[tokio::test]
async fn the_unit_id_is_sent_and_described() {
    let fake = FakeUps::start().await;
    Apc(&fake).online();
    let mut ups = Ups::new(Settings {
        transport: Transport::Tcp {
            address: fake.address.to_string(),
        },
        unit_id: 7,
        profile: Profile::builtin("apc-smt").expect("built in"),
        timeout: TIMEOUT,
    });
    assert_eq!(
        ups.describe(),
        format!("APC Smart-UPS SMT/SRT/SMX at {} unit 7", fake.address)
    );
    ups.read().await;
    assert_eq!(fake.unit_ids(), vec![7, 7]);
}
