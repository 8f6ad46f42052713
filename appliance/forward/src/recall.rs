//! Fetching evicted studies back from the archive they were forwarded to: a C-MOVE to our
//! own AE title, whose sub-operations arrive through the listener and the normal ingest
//! path, which puts each file back in its place.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::{ForwardError, Settings, tls};

/// Longest a recall may take, sub-operations included.
const RECALL_WAIT: Duration = Duration::from_secs(600);

/// Recalls from one DICOM destination.
#[derive(Debug)]
pub struct Recaller {
    calling_ae: String,
    destination: config::DicomDestination,
    tls: Option<storescu::Tls>,
    timeout: Duration,
}

impl Recaller {
    /// The recall configured by `[forward] recall_from`, if any.
    pub fn from_config(
        forward: &config::Forward,
        settings: &Settings,
    ) -> Result<Option<Arc<dyn store::Recall>>, ForwardError> {
        let Some(name) = &forward.recall_from else {
            return Ok(None);
        };
        let Some(d) = forward.destinations.iter().find(|d| &d.name == name) else {
            return Ok(None);
        };
        let config::DestinationKind::Dicom(dicom) = &d.kind else {
            return Ok(None);
        };
        let tls = if dicom.tls {
            Some(
                tls::client_config(dicom).map_err(|message| ForwardError::Tls {
                    destination: d.name.clone(),
                    message,
                })?,
            )
        } else {
            None
        };
        Ok(Some(Arc::new(Recaller {
            calling_ae: settings.calling_ae.clone(),
            destination: dicom.clone(),
            tls,
            timeout: d.timeout,
        })))
    }
}

impl store::Recall for Recaller {
    fn recall(
        &self,
        study_uid: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let address = format!("{}:{}", self.destination.host, self.destination.port);
            let moved = storescu::move_study(
                &self.calling_ae,
                self.destination.ae_title.as_str(),
                &address,
                self.tls.as_ref(),
                &study_uid,
                &self.calling_ae,
                self.timeout,
                RECALL_WAIT,
            )
            .await
            .map_err(|e| e.to_string())?;
            info!(
                study = %study_uid,
                source = %self.destination.ae_title,
                completed = moved.completed,
                failed = moved.failed,
                status = %moved.status,
                "recall finished"
            );
            if moved.complete() {
                Ok(())
            } else {
                Err(format!(
                    "{} answered the C-MOVE with status {} ({} sent, {} failed){}",
                    self.destination.ae_title,
                    moved.status,
                    moved.completed,
                    moved.failed,
                    moved.comment.map(|c| format!(": {c}")).unwrap_or_default()
                ))
            }
        })
    }
}
