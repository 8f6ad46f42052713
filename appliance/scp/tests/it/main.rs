//! Integration tests of the DICOM listener: real associations on 127.0.0.1 against a whole
//! appliance in a temporary directory.

mod basics;
