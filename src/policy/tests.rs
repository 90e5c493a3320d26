//! Unit tests of the policy module.
