//! Integration tests of the DICOM listener: real associations on 127.0.0.1 against a whole
//! appliance in a temporary directory.

mod associations;
mod basics;
mod binding;
mod commitment;
mod flood;
mod query;
mod retrieve;
mod robustness;
mod shutdown;
mod storage;
mod support;
mod tag_order;
mod tls;
