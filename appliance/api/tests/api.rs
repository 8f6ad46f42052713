//! The API's promises: the control socket's JSON is the protocol `outpost` has always spoken,
//! and every error has its HTTP status.

use api::{ApiError, QuarantineResolution, Request, Response};

#[test]
fn requests_keep_the_control_protocol() {
    // Older clients and scripts send these lines; they must keep meaning the same.
    let cases = [
        (r#"{"cmd":"status"}"#, Request::Status),
        (
            r#"{"cmd":"dead","destination":"pacs","limit":50}"#,
            Request::Dead {
                destination: "pacs".into(),
                limit: 50,
            },
        ),
        (
            r#"{"cmd":"release-corrections","destination":null,"sops":["1.2"],"all":false}"#,
            Request::ReleaseCorrections {
                destination: None,
                sops: vec!["1.2".into()],
                all: false,
            },
        ),
        (
            r#"{"cmd":"resolve-quarantine","seq":7,"resolution":"split"}"#,
            Request::ResolveQuarantine {
                seq: 7,
                resolution: QuarantineResolution::Split,
            },
        ),
    ];
    for (line, request) in cases {
        assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        assert_eq!(serde_json::to_string(&request).unwrap(), line);
    }
}

#[test]
fn an_error_answers_with_its_message_and_a_status() {
    let e = ApiError::UnknownDestination {
        name: "pac".into(),
        known: vec!["pacs".into(), "cloud".into()],
    };
    assert_eq!(e.http_status(), 404);
    let answer = serde_json::to_string(&Response::from(e)).unwrap();
    assert_eq!(
        answer,
        r#"{"error":"\"pac\" is not a configured destination; known: pacs, cloud"}"#
    );
    assert_eq!(ApiError::ArchiveFull("full".into()).http_status(), 503);
    assert_eq!(ApiError::ChooseCorrections.http_status(), 422);
    assert_eq!(
        ApiError::NoCorrections { destination: None }.to_string(),
        "no held corrections"
    );
}
