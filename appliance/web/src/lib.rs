//! The admin panel's HTTPS server: its certificate (the operator's, or
//! a self-signed one made once under the data directory, with the fingerprint an operator
//! compares when the browser first warns about it), the listener and the login.
//!
//! Only `web` knows HTTP; everything it shows or changes goes through the supervisor's
//! `Running::handle`, like the control socket.

pub mod cert;
pub mod pages;
pub mod server;

pub use cert::{CertError, CertInfo, WebCert};
pub use server::{Dispatch, Panel, ServeError, spawn};
