//! Storage Commitment reports (N-EVENT-REPORT) an archive sends to our listener for
//! instances we forwarded to it: read, handed to the store, answered.

use dimse::{Command, CommandField, DimseError, Link, Status};
use std::net::IpAddr;
use storescu::commitment::parse_event_report;

use store::outbox::{CommitmentReport, Recorded, ReportRefusal, Reporter};
use tracing::{info, warn};

use crate::session::Session;

/// Largest report read: a reference is about 130 bytes, so this is some 100,000 instances.
const MAX_REPORT: usize = 16 << 20;

/// Failure Reason (0008,1197) codes of PS3.4 J.3.2.1.3, in words.
fn failure_reason(code: u16) -> String {
    let what = match code {
        0x0110 => "processing failure",
        0x0112 => "no such object instance",
        0x0213 => "resource limitation",
        0x0122 => "referenced SOP class not supported",
        0x0119 => "class / instance conflict",
        0x0131 => "duplicate transaction UID",
        _ => "failure",
    };
    format!("{what} (0x{code:04X})")
}

/// Class / Instance Conflict (PS3.7 C.4.1): the report names an instance under another
/// SOP class than it was sent as.
const CLASS_INSTANCE_CONFLICT: Status = Status(0x0119);
/// Resource Limitation.
const RESOURCE_LIMITATION: Status = Status(0x0213);

/// Whether `peer` is one of the addresses `host` names (an address, or a name resolved now).
async fn from_host(host: &str, peer: IpAddr) -> bool {
    let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, 0))
            .await
            .map(|a| a.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    };
    ips.iter()
        .any(|ip| ip.to_canonical() == peer.to_canonical())
}

impl<L: Link> Session<L> {
    /// Hands a parsed report to the store if the caller may report for the transaction's
    /// destination, and says how it went (status and comment of the N-EVENT-REPORT-RSP).
    async fn record_report(
        &mut self,
        report: storescu::commitment::EventReport,
    ) -> (Status, Option<String>) {
        let mut destinations = Vec::new();
        for r in &self.services.reporters {
            let ae = config::AeTitle::parse(&r.ae_title);
            let same_ae = ae.as_ref().is_ok_and(|a| a.matches(&self.calling));
            if !same_ae {
                continue;
            }
            match &r.host {
                Some(host) if !from_host(host, self.peer.ip()).await => {}
                _ => destinations.push(r.destination.clone()),
            }
        }
        if destinations.is_empty() {
            warn!(
                peer = %self.peer,
                calling = %self.calling,
                transaction = %report.transaction_uid,
                "Storage Commitment report refused: the caller is not a destination that may report"
            );
            return (
                Status::NOT_AUTHORIZED,
                Some(format!(
                    "{} at {} is not a Storage Commitment destination of this archive; reports are accepted only from the destination the instances were sent to",
                    self.calling,
                    self.peer.ip()
                )),
            );
        }
        info!(
            peer = %self.peer,
            calling = %self.calling,
            transaction = %report.transaction_uid,
            committed = report.committed.len(),
            failed = report.failed.len(),
            "Storage Commitment report"
        );
        let sop_classes = report
            .committed
            .iter()
            .chain(report.failed.iter().map(|(r, _)| r))
            .map(|r| (r.sop_instance_uid.clone(), r.sop_class_uid.clone()))
            .collect();
        let recorded = self
            .services
            .store
            .record_commitment(CommitmentReport {
                transaction_uid: report.transaction_uid,
                committed: report
                    .committed
                    .into_iter()
                    .map(|r| r.sop_instance_uid)
                    .collect(),
                failed: report
                    .failed
                    .into_iter()
                    .map(|(r, code)| (r.sop_instance_uid, failure_reason(code)))
                    .collect(),
                sop_classes,
                from: Some(Reporter {
                    ae_title: self.calling.clone(),
                    destinations,
                }),
            })
            .await;
        match recorded {
            Ok(Recorded::Settled | Recorded::Kept) => (Status::SUCCESS, None),
            Ok(Recorded::Refused(why)) => {
                warn!(peer = %self.peer, calling = %self.calling, "Storage Commitment report refused: {why}");
                let status = match why {
                    ReportRefusal::NotItsDestination { .. } => Status::NOT_AUTHORIZED,
                    ReportRefusal::SopClassMismatch { .. } => CLASS_INSTANCE_CONFLICT,
                    ReportRefusal::TooManyEarly { .. } | ReportRefusal::TooLargeEarly { .. } => {
                        RESOURCE_LIMITATION
                    }
                };
                (status, Some(why.to_string()))
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "could not record a Storage Commitment report");
                (Status::PROCESSING_FAILURE, Some(e.to_string()))
            }
        }
    }

    pub(crate) async fn n_event_report(
        &mut self,
        pc_id: u8,
        command: Command,
    ) -> Result<(), DimseError> {
        let data = if command.has_data_set {
            Some(self.channel.read_data_set(pc_id, MAX_REPORT).await?)
        } else {
            None
        };
        let enc = self
            .channel
            .context(pc_id)
            .and_then(|pc| dataset::ts::syntax_info(dataset::ts::trim_uid(&pc.transfer_syntax)))
            .map(|i| i.encoding)
            .unwrap_or(dataset::Encoding::IMPLICIT_LE);
        let (status, comment) = if command.sop_class() != dimse::STORAGE_COMMITMENT {
            (
                Status::UNRECOGNIZED_OPERATION,
                Some(format!(
                    "N-EVENT-REPORT is accepted only for Storage Commitment, not {}",
                    command.sop_class()
                )),
            )
        } else {
            match data.map(|d| d.map(|bytes| parse_event_report(&bytes, enc))) {
                None => (
                    Status::PROCESSING_FAILURE,
                    Some("the report carries no data set".to_string()),
                ),
                Some(Err(size)) => (
                    Status::PROCESSING_FAILURE,
                    Some(format!(
                        "the report is {size} bytes, more than the {MAX_REPORT} accepted"
                    )),
                ),
                Some(Ok(Err(e))) => (Status::PROCESSING_FAILURE, Some(e.to_string())),
                Some(Ok(Ok(report))) => self.record_report(report).await,
            }
        };
        let mut rsp = Command::new(CommandField::N_EVENT_REPORT_RSP);
        rsp.message_id_responded_to = command.message_id;
        rsp.affected_sop_class_uid = command.affected_sop_class_uid.clone();
        rsp.affected_sop_instance_uid = command.affected_sop_instance_uid.clone();
        rsp.event_type_id = command.event_type_id;
        rsp.status = Some(status);
        let rsp = match comment {
            Some(c) => rsp.with_comment(c),
            None => rsp,
        };
        self.channel.send_command(pc_id, &rsp).await
    }
}
