//! The one place that turns hardware readings into actions.
