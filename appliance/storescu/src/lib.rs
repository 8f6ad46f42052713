//! Associations Outpost opens to remote archives: sending stored instances to a Storage SCP,
//! probing with C-ECHO, and asking for a study back with C-MOVE.
//!
//! [`association_options`] proposes, per SOP class, a presentation context for each stored
//! transfer syntax plus an Explicit/Implicit VR Little Endian fallback; [`connect`] opens the
//! association, plain or DICOM TLS, and returns a [`Peer`] that sends one instance at a time
//! ([`Peer::send`]) until it is released or aborted; [`echo`] probes a destination with a
//! C-ECHO. The pieces below them are public too, generic over the association's role, for
//! the C-GET SCP that sends on the requestor's own association: [`choose_context`],
//! [`payload`], [`send_store`], [`wait_store_response`].
//!
//! Memory stays at one PDU per instance: files are streamed from disk, and only an instance
//! the receiver cannot take in its stored syntax is converted in memory, by `transcode`,
//! within the configured limit. Every P-DATA PDU is built by `dimse::Channel`.

pub mod commitment;
mod context;
mod options;
mod payload;
mod peer;
mod retrieve;
mod send;

pub use context::{NoContext, choose_context};
pub use options::{OptionsError, association_options, association_options_with};
pub use payload::{Payload, PayloadError, payload};
pub use peer::{CommitmentRequested, ConnectError, EchoError, Peer, SendError, Tls, connect, echo};
pub use retrieve::{Moved, move_study};
pub use send::{MoveOriginator, SendStoreError, send_store, stream_file, wait_store_response};
