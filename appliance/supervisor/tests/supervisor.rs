//! The running supervisor, started as the binary starts it (through `testkit::Appliance`),
//! answering over its real control socket and stopping in order.

use std::time::{Duration, Instant};

use api::{Event, Request, Response};
use testkit::Appliance;

fn edge(extra: &str) -> String {
    // A destination nobody listens on: forwarding runs and finds it down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!(
        r#"
[dicom]
ae_title = "EDGE"
accept_unknown_callers = "loopback"

[[forward.destination]]
name = "central"
kind = "dicom"
ae_title = "CENTRAL"
host = "127.0.0.1"
port = {port}
probe_interval_s = 1
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_answers_what_running_handle_answers() {
    let app = Appliance::start(&edge("")).await;
    let socket = supervisor::socket_path(&app.config.storage.data_dir);
    let over_socket = supervisor::call(&socket, &Request::Status).await.unwrap();
    let Response::Status(status) = over_socket else {
        panic!("not a status: {over_socket:?}");
    };
    assert_eq!(status.ae_title, "EDGE");
    assert_eq!(status.listening, vec![format!("DICOM {}", app.addr)]);
    assert_eq!(status.destinations.len(), 1);
    assert_eq!(status.destinations[0].queue.destination, "central");
    // The hardware section is typed end to end: the monitors ran on the fixture sources.
    assert!(status.hardware.ups.is_none());
    assert!(status.hardware.forwarding_held.is_empty());
    // The same request in process gives the same answer.
    let Response::Status(direct) = app.running().handle(Request::Status).await else {
        panic!("not a status");
    };
    assert_eq!(direct.ae_title, status.ae_title);
    assert_eq!(direct.listening, status.listening);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_api_errors_with_their_words() {
    let app = Appliance::start(&edge("")).await;
    let socket = supervisor::socket_path(&app.config.storage.data_dir);
    let answer = supervisor::call(
        &socket,
        &Request::Pause {
            destination: "centrl".into(),
        },
    )
    .await
    .unwrap();
    let expected = api::ApiError::UnknownDestination {
        name: "centrl".into(),
        known: vec!["central".into()],
    };
    assert_eq!(expected.http_status(), 404);
    match answer {
        Response::Error(e) => assert_eq!(e, expected.to_string()),
        other => panic!("{other:?}"),
    }
    match app
        .running()
        .handle(Request::Resubmit {
            destination: "central".into(),
            seqs: vec![],
        })
        .await
    {
        Response::Error(e) => assert_eq!(e, "central has no dead letters to resubmit"),
        other => panic!("{other:?}"),
    }
    // Pause is done, and audited.
    match app
        .running()
        .handle(Request::Pause {
            destination: "central".into(),
        })
        .await
    {
        Response::Done(what) => assert!(what.starts_with("central: paused"), "{what}"),
        other => panic!("{other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_told_to_everyone_and_waited_for_within_its_deadline() {
    // Forwarding runs against a destination that is down, the monitors and the policy loop
    // run, the control socket listens: all of them must end on the one token, so the stop
    // takes about nothing, not the deadline, and the archive closes cleanly.
    let app = Appliance::start(&edge("")).await;
    let mut events = app.running().events();
    let data_dir = app.config.storage.data_dir.clone();
    let socket = supervisor::socket_path(&data_dir);
    let started = Instant::now();
    let (dir, stopped) = app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop took {:?}",
        started.elapsed()
    );
    assert_eq!(stopped.aborted, 0);
    let mut said = Vec::new();
    while let Ok(e) = events.try_recv() {
        said.push(e);
    }
    assert!(
        said.contains(&Event::Stopping {
            reason: "SIGTERM".into()
        }),
        "{said:?}"
    );
    // The socket is gone and the clean-shutdown marker is there for the next start.
    assert!(!socket.exists());
    assert!(data_dir.join("clean-shutdown.json").exists());
    drop(dir);
}

/// `/proc/mdstat` of a raid5 that lost two of its three members, captured from a real array.
const FAILED_MD0: &str = include_str!("../../health/tests/fixtures/raid/raid5-failed/proc/mdstat");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_data_array_holds_ingest_in_status_and_events() {
    // The real monitors, policy loop and status run in tests now: the RAID monitor reads the
    // fixture mdstat, the policy holds ingest, and both the status (typed, through the
    // control socket) and the event stream say so.
    let app = Appliance::start(
        "[dicom]\nae_title = \"EDGE\"\n\n[health]\nraid_interval_s = 1\ndata_arrays = [\"md0\"]\n",
    )
    .await;
    let mut events = app.running().events();
    std::fs::write(app.dir.path().join("hw/mdstat"), FAILED_MD0).unwrap();
    let socket = supervisor::socket_path(&app.config.storage.data_dir);
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let Response::Status(status) =
                supervisor::call(&socket, &Request::Status).await.unwrap()
            else {
                panic!("not a status");
            };
            let failed = status.hardware.raid.reading.as_ref().is_some_and(|arrays| {
                arrays
                    .iter()
                    .any(|a| a.name == "md0" && a.health == api::readings::RaidHealth::Failed)
            });
            if failed && status.hardware.ingest_held.is_some() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the RAID monitor reads md0 as failed within 20 s");
    let held = status.hardware.ingest_held.clone().unwrap();
    assert!(held.contains("md0"), "{held}");
    assert!(
        status
            .hardware
            .alerts
            .iter()
            .any(|a| a.severity == api::readings::Severity::Critical && a.message.contains("md0")),
        "{:?}",
        status.hardware.alerts
    );
    // The policy loop said so on the event stream too.
    let mut said = Vec::new();
    while let Ok(e) = events.try_recv() {
        said.push(e);
    }
    assert!(
        said.iter()
            .any(|e| matches!(e, Event::IngestHeld { reason: Some(r) } if r.contains("md0"))),
        "{said:?}"
    );
    app.stop().await;
}
