//! The one place that decides, for every way a delivery can end, whether the instance was
//! delivered, should be tried again later, or is given up on (dead-lettered).
//!
//! The rule of thumb: a failure that time can cure (the peer is down, busy or out of
//! resources) is retried, and one of the destination as a whole (unreachable, unavailable)
//! does not count against the instance at all; a failure that only a person can cure (the peer does not take this
//! SOP class, cannot parse the data set, refuses it by policy) is dead-lettered with the
//! peer's own words, so a technician can fix the cause and resubmit.
//!
//! What follows from a verdict (the backoff, the attempt limit, a dead letter for a file since
//! replaced) is decided in one place too: [`store::settle::settle`].

use std::time::Duration;

use dimse::Status;

/// The verdict type lives beside [`store::settle::settle`], which turns it into what happens
/// to the queue entry; this module is the only one that builds verdicts.
pub use store::settle::Verdict;

/// The status of a C-STORE-RSP (DICOM destinations), or the FailureReason of a STOW-RS
/// FailedSOPSequence item, which uses the same codes (PS3.18 Table 10.5.3-1, PS3.4 B.2.3).
pub fn store_status(status: Status, comment: Option<&str>) -> Verdict {
    let code = status.0;
    let said = match comment {
        Some(c) if !c.trim().is_empty() => format!("status 0x{code:04X} ({})", c.trim()),
        _ => format!("status 0x{code:04X}"),
    };
    match code {
        0x0000 => Verdict::delivered(),
        // Warnings: stored, possibly with coercion or discarded elements.
        0x0001 | 0xB000..=0xBFFF => Verdict::Delivered {
            note: Some(format!("stored with a warning, {said}")),
            confirmed: warning_confirms(code),
        },
        // Duplicate SOP Instance: the destination already holds this instance.
        0x0111 => Verdict::Delivered {
            note: Some(format!("the destination already had it, {said}")),
            confirmed: true,
        },
        // Out of resources, and the generic processing failure, are what a busy or
        // momentarily broken peer says; Cancel means it did not take it this time.
        0xA700..=0xA7FF | 0x0110 | 0xFE00 => {
            Verdict::retry(format!("the destination could not store it now, {said}"))
        }
        0x0122 => Verdict::dead(format!(
            "the destination does not support this SOP class, {said}"
        )),
        0xA900..=0xA9FF => Verdict::dead(format!(
            "the destination says the data set does not match its SOP class, {said}"
        )),
        0xC000..=0xCFFF => Verdict::dead(format!(
            "the destination cannot understand the data set, {said}"
        )),
        0x0124 => Verdict::dead(format!(
            "the destination refused it as not authorized, {said}"
        )),
        _ => Verdict::dead(format!("the destination refused it, {said}")),
    }
}

/// Whether a store warning still leaves a whole copy upstream: 0xB006 (elements discarded)
/// and 0xB007 (data set does not match the SOP class) do not.
pub fn warning_confirms(code: u16) -> bool {
    !matches!(code, 0xB006 | 0xB007)
}

/// An HTTP answer that did not carry per-instance outcomes (or whose body could not be read
/// as a STOW-RS response). `message` is the server's own text, shortened by the caller.
pub fn http_status(status: u16, message: &str, retry_after: Option<Duration>) -> Verdict {
    let said = if message.trim().is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", message.trim())
    };
    match status {
        200..=299 => Verdict::retry(format!(
            "the server answered {said} without saying which instances it stored"
        )),
        408 | 429 | 502..=504 => Verdict::Unreachable {
            reason: format!("the server is unavailable or busy, {said}"),
            after: retry_after,
        },
        // Other server errors may be caused by this very instance, so they count.
        500..=599 => Verdict::Retry {
            reason: format!("the server failed, {said}"),
            after: retry_after,
        },
        // Credentials are a property of the destination, fixed by configuration: giving up on
        // every queued instance would turn that fix into a mass resubmission, so they wait.
        401 | 403 => Verdict::retry(format!(
            "the server refused our credentials, {said}; check the destination's auth settings"
        )),
        413 => Verdict::dead(format!(
            "the server will not take an instance this large, {said}"
        )),
        _ => Verdict::dead(format!("the server refused it, {said}")),
    }
}

/// How sending one instance on an open association failed ([`storescu::Peer::send`]).
///
/// What is wrong with the instance for this destination is dead-lettered with the reason,
/// since sending it again ends the same way: no accepted context can carry it; it cannot be
/// read or converted for the receiver (a `transcode` refusal: over the memory limit, a
/// codestream larger than its geometry, no codec); or its own file failed mid-send (a
/// corrupt deflate stream ends there, as the data set is inflated while it goes out). An
/// association that failed with the instance in flight may have been the network or the
/// peer, so that is tried again, and the attempt counts: an instance that keeps breaking
/// the association moves behind the others instead of holding the destination for ever.
pub fn send_error(e: &storescu::SendError) -> Verdict {
    use storescu::SendError;
    match e {
        SendError::NoContext(no) => Verdict::dead(no.reason()),
        SendError::Payload(p) => Verdict::dead(p.reason()),
        SendError::Interrupted { .. } => Verdict::dead(e.to_string()),
        SendError::Closed { .. } | SendError::Association { .. } => Verdict::retry(e.to_string()),
    }
}

/// The STOW-RS request failed on the way. Only a connection that could not be made says the
/// server is away; a request that failed once sent (timeout, reset mid-upload) may be this
/// batch's doing, so it counts against its instances and moves them back in the queue
/// instead of holding the destination on them for ever.
pub fn request_failed(connect: bool, what: impl std::fmt::Display) -> Verdict {
    if connect {
        transport(what)
    } else {
        Verdict::retry(format!("the STOW-RS request failed: {what}"))
    }
}

/// An instance no request carried: only a mistake in planning a batch can leave one so, and
/// it goes again.
pub fn not_sent() -> Verdict {
    Verdict::retry("no request carried this instance")
}

/// Why no OAuth2 token could be had. Like a 401 from the destination itself, each is fixed in
/// the configuration (or at the token endpoint), so the instances wait rather than being
/// given up on.
pub enum TokenProblem<'a> {
    NoEndpoint,
    Refused {
        endpoint: &'a str,
        status: u16,
        said: &'a str,
    },
    Unusable {
        endpoint: &'a str,
        status: u16,
        why: &'a str,
    },
}

pub fn token(problem: TokenProblem<'_>, after: Option<Duration>) -> Verdict {
    let reason = match problem {
        TokenProblem::NoEndpoint => "no OAuth2 token endpoint is configured".to_string(),
        TokenProblem::Refused {
            endpoint,
            status,
            said,
        } => format!(
            "the OAuth2 token endpoint {endpoint} refused to issue a token, HTTP {status}{}{said}; check client_id, client_secret and scope",
            if said.is_empty() { "" } else { ": " }
        ),
        TokenProblem::Unusable {
            endpoint,
            status,
            why,
        } => format!("the OAuth2 token endpoint {endpoint} answered HTTP {status}, but {why}"),
    };
    Verdict::Retry { reason, after }
}

/// What checking a stored file before sending it found.
pub enum StoredFile<'a> {
    Missing {
        file: &'a str,
    },
    /// Opening or reading it failed for another reason (it may work next time).
    Unreadable {
        file: &'a str,
        error: &'a str,
    },
    /// It is not as long as the index says.
    WrongSize {
        file: &'a str,
        len: u64,
        size: u64,
    },
    /// The check itself could not run.
    Unchecked {
        error: &'a str,
    },
}

pub fn stored_file(problem: StoredFile<'_>) -> Verdict {
    match problem {
        // A stored file does not come back by waiting; someone has to look.
        StoredFile::Missing { file } => Verdict::dead(format!(
            "the stored file {file} is missing; run `outpost verify` and resubmit once the instance is stored again"
        )),
        StoredFile::WrongSize { file, len, size } => Verdict::dead(format!(
            "the stored file {file} is {len} bytes but the index says {size}; run `outpost verify`"
        )),
        StoredFile::Unreadable { file, error } => {
            Verdict::retry(format!("cannot read the stored file {file}: {error}"))
        }
        StoredFile::Unchecked { error } => {
            Verdict::retry(format!("checking the stored files failed: {error}"))
        }
    }
}

/// What a STOW-RS response said of one instance of the request.
pub enum StowOutcome {
    /// In the ReferencedSOPSequence, with its WarningReason if any.
    Stored(Option<u16>),
    /// In the FailedSOPSequence, with its FailureReason if any.
    Failed(Option<u16>),
    /// In neither.
    NotMentioned,
}

/// One instance's verdict from a STOW-RS response answered with HTTP `status`; a Retry-After
/// applies to everything the answer says to try again.
pub fn stow_instance(outcome: StowOutcome, status: u16, retry_after: Option<Duration>) -> Verdict {
    let verdict = match outcome {
        StowOutcome::Stored(warning) => Verdict::Delivered {
            note: warning.map(stow_warning_note),
            confirmed: warning.is_none_or(warning_confirms),
        },
        StowOutcome::Failed(Some(code)) => store_status(Status(code), None),
        StowOutcome::Failed(None) => Verdict::retry(format!(
            "the server listed it as failed (HTTP {status}) without a FailureReason"
        )),
        StowOutcome::NotMentioned => Verdict::retry(format!(
            "the server answered HTTP {status} without mentioning this instance in its STOW-RS response"
        )),
    };
    match verdict {
        Verdict::Retry {
            reason,
            after: None,
        } => Verdict::Retry {
            reason,
            after: retry_after,
        },
        Verdict::Unreachable {
            reason,
            after: None,
        } => Verdict::Unreachable {
            reason,
            after: retry_after,
        },
        other => other,
    }
}

/// The note kept with an instance stored with a WarningReason (PS3.18 Table 10.5.3-2).
fn stow_warning_note(code: u16) -> String {
    let meaning = match code {
        0xB000 => " (coercion of data elements)",
        0xB006 => " (elements discarded)",
        0xB007 => " (data set does not match SOP class)",
        _ => "",
    };
    format!("stored with warning 0x{code:04X}{meaning}")
}

/// No association could carry even one instance (its SOP class and the others' exceed what
/// one association can propose): sending it again ends the same way.
pub fn unassociable(why: impl std::fmt::Display) -> Verdict {
    Verdict::dead(why.to_string())
}

/// The instances were stored, but the Storage Commitment request for them failed: they go
/// again, since nothing confirms them.
pub fn commitment_request_failed(why: impl Into<String>) -> Verdict {
    Verdict::retry(why)
}

/// An answer of the alert webhook (`status` `None`: it could not be reached, `message`
/// says why). A webhook has no prober to wait for, so a receiver that is away or busy counts
/// as a failed attempt like any other (its alerts are in the log and the audit trail
/// anyway); otherwise its HTTP status means what it means for a STOW-RS server, except that
/// any 2xx takes the alert.
pub fn webhook(status: Option<u16>, message: &str, retry_after: Option<Duration>) -> Verdict {
    match status {
        Some(200..=299) => Verdict::delivered(),
        Some(code) => match http_status(code, message, retry_after) {
            Verdict::Unreachable { reason, after } => Verdict::Retry { reason, after },
            other => other,
        },
        None => Verdict::retry(format!("the alert webhook could not be reached: {message}")),
    }
}

/// A failure to reach the destination or to complete the exchange (connection refused, TLS,
/// timeout, reset, association aborted): always worth another try.
pub fn transport(what: impl std::fmt::Display) -> Verdict {
    Verdict::Unreachable {
        reason: format!("the destination could not be reached: {what}"),
        after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(v: &Verdict) -> &'static str {
        match v {
            Verdict::Delivered { .. } => "delivered",
            Verdict::Retry { .. } => "retry",
            Verdict::DeadLetter { .. } => "dead",
            Verdict::Unreachable { .. } => "unreachable",
        }
    }

    #[test]
    fn store_statuses_follow_the_issue_table() {
        for (code, expected) in [
            (0x0000, "delivered"),
            (0xB000, "delivered"),
            (0xB007, "delivered"),
            (0x0111, "delivered"),
            (0xA700, "retry"),
            (0xA7FF, "retry"),
            (0x0110, "retry"),
            (0xFE00, "retry"),
            (0x0122, "dead"),
            (0xC000, "dead"),
            (0xCFFF, "dead"),
            (0xA900, "dead"),
            (0x0124, "dead"),
            (0x0211, "dead"),
        ] {
            assert_eq!(
                kind(&store_status(Status(code), None)),
                expected,
                "0x{code:04X}"
            );
        }
    }

    #[test]
    fn a_conversion_no_retry_can_fix_is_dead_lettered_with_its_reason() {
        // Review finding 2: an instance whose conversion failed was to be given up on, not
        // sent again for ever; the reason is transcode's own sentence.
        let why = "cannot convert from 1.2.840.10008.1.2.1.99 to 1.2.840.10008.1.2: the \
                   deflated data set inflates to more than 255 MB";
        let e = storescu::SendError::Payload(storescu::PayloadError::TooLarge(why.into()));
        assert_eq!(send_error(&e), Verdict::dead(why));
        let e = storescu::SendError::Payload(storescu::PayloadError::Conversion(why.into()));
        assert_eq!(send_error(&e), Verdict::dead(why));
        let e = storescu::SendError::Interrupted {
            address: "127.0.0.1:104".into(),
            reason: "the deflated data set is corrupt".into(),
        };
        assert_eq!(kind(&send_error(&e)), "dead");
        // The association failing with the instance in flight may be the network's doing.
        let e = storescu::SendError::Association {
            address: "127.0.0.1:104".into(),
            source: dimse::DimseError::Aborted,
        };
        assert_eq!(kind(&send_error(&e)), "retry");
    }

    #[test]
    fn http_statuses_follow_the_issue_table() {
        for (code, expected) in [
            (408, "unreachable"),
            (429, "unreachable"),
            (500, "retry"),
            (503, "unreachable"),
            (401, "retry"),
            (400, "dead"),
            (404, "dead"),
            (413, "dead"),
            (415, "dead"),
        ] {
            assert_eq!(kind(&http_status(code, "", None)), expected, "{code}");
        }
        let hint = Some(Duration::from_secs(30));
        assert_eq!(
            http_status(503, "maintenance", hint),
            Verdict::Unreachable {
                reason: "the server is unavailable or busy, HTTP 503: maintenance".into(),
                after: hint
            }
        );
    }

    #[test]
    fn reasons_carry_the_peers_words() {
        let Verdict::DeadLetter { reason } = store_status(Status(0x0122), Some("no MG here  "))
        else {
            panic!("0x0122 must be dead-lettered")
        };
        assert!(reason.contains("0x0122 (no MG here)"), "{reason}");
    }
}
