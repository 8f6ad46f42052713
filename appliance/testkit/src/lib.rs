//! Test support shared by the crates' integration tests: [`Appliance`] runs the archive and
//! its DICOM listener in a temporary directory on `127.0.0.1:0`, [`Scu`] speaks DIMSE to it
//! over a real association, [`NotifySocket`] stands in for systemd's notify socket.

mod appliance;
mod notify_socket;
mod scu;

pub use appliance::Appliance;
pub use notify_socket::NotifySocket;
pub use scu::{Received, Scu, options};

/// Transfer syntaxes tests propose most.
pub const EXPLICIT_LE: &str = dataset::ts::EXPLICIT_VR_LITTLE_ENDIAN;
pub const IMPLICIT_LE: &str = dataset::ts::IMPLICIT_VR_LITTLE_ENDIAN;
pub const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
