//! End-to-end tests of the way fleets run Clew: the container image and the
//! Helm chart.
//!
//! Run as root, one test at a time (`cargo xtask test`, which builds the
//! image with podman first and names it in CLEW_TEST_IMAGE).

mod chart;
mod collector;
mod image;
