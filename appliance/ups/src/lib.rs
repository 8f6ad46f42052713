//! The UPS over Modbus: register profiles, readings and the outlet-off command.
